"""One priority table: the alert's rank, a rule's priority filter and the Rego library agree."""

from __future__ import annotations

import json

import pytest

from talon_opa.core import priorities
from talon_opa.core.events import Alert
from talon_opa.translator import validate
from tests.rego_support import POLICIES
from tests.test_policies import opa


@pytest.mark.parametrize(
    ("name", "rank"),
    [("Debug", 1), ("informational", 2), ("NOTICE", 3), ("Emergency", 8), ("Info", 0), ("", 0), (" Error", 0)],
)
def test_rank_is_case_insensitive_and_unknown_names_rank_0(name: str, rank: int) -> None:
    assert priorities.rank(name) == rank
    assert Alert(priority=name).priority_rank == rank
    assert validate.parse_priority(f">={name}").rank == rank


def test_the_rego_library_ranks_like_the_python_table() -> None:
    library = POLICIES / "talon" / "lib" / "priority"
    done = opa("eval", "--format=json", "-d", str(library), "data.talon.lib.priority.ranks")
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["result"][0]["expressions"][0]["value"] == dict(priorities.RANKS)
