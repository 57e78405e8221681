"""The backoff of every retry loop: waits double from `initial` up to `maximum`, counted attempts, reset.

Doubling a float is exact, so the waits are compared exactly."""

from __future__ import annotations

import pytest

from talon_opa.core.backoff import Backoff, Policy


@pytest.mark.parametrize(
    ("policy", "waits"),
    [
        (Policy(0.05, 2.0), [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0]),
        (Policy(0.02, 0.1), [0.02, 0.04, 0.08, 0.1, 0.1]),
        (Policy(1.0, 1.0), [1.0, 1.0, 1.0]),
        (Policy(3.0, 2.0), [3.0, 2.0, 2.0]),  # an initial wait above the maximum is kept once
        (Policy(0.0, 5.0), [0.0, 0.0, 0.0]),
    ],
)
def test_waits_double_up_to_the_maximum(policy: Policy, waits: list[float]) -> None:
    backoff = Backoff(policy)
    assert [backoff.next() for _ in waits] == waits


def test_the_default_policy_is_the_engine_default() -> None:
    assert Policy() == Policy(initial=0.05, maximum=2.0)


def test_attempts_are_counted_from_one() -> None:
    backoff = Backoff(Policy(0.1, 1.0))
    seen = [backoff.attempt]
    for _ in range(3):
        backoff.next()
        seen.append(backoff.attempt)
    assert seen == [1, 2, 3, 4]


def test_delay_is_the_next_wait() -> None:
    backoff = Backoff(Policy(0.1, 0.3))
    assert backoff.delay == 0.1
    assert backoff.next() == 0.1
    assert backoff.delay == 0.2
    backoff.next()
    assert backoff.delay == 0.3


def test_reset_starts_again_from_the_first_attempt_and_the_initial_wait() -> None:
    backoff = Backoff(Policy(0.1, 5.0))
    for _ in range(4):
        backoff.next()
    assert (backoff.attempt, backoff.delay) == (5, 1.6)
    backoff.reset()
    assert (backoff.attempt, backoff.delay) == (1, 0.1)
    assert [backoff.next() for _ in range(3)] == [0.1, 0.2, 0.4]


async def test_sleep_waits_the_computed_delays_with_the_injected_sleep() -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    backoff = Backoff(Policy(0.25, 1.0), sleep=sleep)
    for _ in range(5):
        await backoff.sleep()
    assert slept == [0.25, 0.5, 1.0, 1.0, 1.0]
    assert backoff.attempt == 6


def test_backoffs_of_one_policy_are_independent() -> None:
    policy = Policy(0.1, 1.0)
    first, second = Backoff(policy), Backoff(policy)
    first.next()
    first.next()
    assert (second.attempt, second.next()) == (1, 0.1)
    assert (first.attempt, first.delay) == (3, 0.4)
