"""Loading rules pauses Python's cyclic garbage collector and always puts it back as it was."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from talon_opa.catalog import default_registry
from talon_opa.core.errors import RulesError
from talon_opa.translator import load, rules

GOOD = """\
- rule: Shell
  match:
    rules: [Terminal shell in container]
  actions:
    - action: Kill
      actionner: kubernetes:terminate
"""


@pytest.fixture
def collector() -> Iterator[None]:
    was = gc.isenabled()
    yield
    if was:
        gc.enable()
    else:
        gc.disable()


def test_the_collector_is_off_while_loading_and_back_after(tmp_path: Path, collector: None) -> None:
    gc.enable()
    path = tmp_path / "rules.yaml"
    path.write_text(GOOD)
    seen: list[bool] = []
    real = load.load_files

    def spy(paths: list[Path]) -> load.Loaded:
        seen.append(gc.isenabled())
        return real(paths)

    mp = pytest.MonkeyPatch()
    mp.setattr(load, "load_files", spy)
    try:
        assert rules.load_ruleset([path], default_registry()).rules[0].name == "Shell"
        rules.merge_files([path])
    finally:
        mp.undo()
    assert seen == [False, False]
    assert gc.isenabled()


def test_the_collector_comes_back_after_invalid_rules_and_errors(tmp_path: Path, collector: None) -> None:
    gc.enable()
    bad = tmp_path / "bad.yaml"
    bad.write_text("- rule: Shell\n  actions: 3\n")
    with pytest.raises(RulesError):
        rules.load_ruleset([bad], default_registry())
    assert gc.isenabled()
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    with pytest.raises(AttributeError):
        rules.check_rules([good], None)  # type: ignore[arg-type]  # fails inside, with the collector off
    assert gc.isenabled()


def test_a_disabled_collector_stays_disabled(tmp_path: Path, collector: None) -> None:
    gc.disable()
    path = tmp_path / "rules.yaml"
    path.write_text(GOOD)
    rules.check_rules([path], default_registry())
    assert not gc.isenabled()
