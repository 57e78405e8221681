"""The audit trail's hash chain: every kind of tampering is found at its line; plan comparison for replay."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from talon_opa.cli import audit as audit_cli
from talon_opa.cli.replay import compare
from talon_opa.engine import audit_chain, audit_segments
from talon_opa.engine.audit_chain import GENESIS, seal, verify


def chain(n: int) -> list[bytes]:
    """n sealed lines, as the writer writes them."""
    lines, prev = [], GENESIS
    for seq in range(1, n + 1):
        body = json.dumps({"rule": "Terminal shell in container", "output": f"shell {seq} \u00e9"})
        record = {"v": 1, "kind": "alert", "seq": seq, "alert_id": f"a{seq}", "body": body, "results": []}
        line, prev = seal({**record, "digest": audit_chain.body_digest(body.encode())}, prev)
        lines.append(line)
    return lines


def edited(line: bytes, **changes: Any) -> bytes:
    doc = json.loads(line)
    doc.update(changes)
    return audit_chain.canonical(doc) + b"\n"


def problems(lines: list[bytes], anchor: str = "") -> list[tuple[int, str]]:
    return [(p.line, p.message.split(":")[0]) for p in verify(lines, anchor=anchor).problems]


def test_an_untouched_chain_verifies_and_its_head_is_the_last_hash() -> None:
    lines = chain(5)
    report = verify(lines)
    assert report.intact
    assert (report.lines, report.alerts) == (5, 5)
    assert report.head == json.loads(lines[-1])["hash"]
    assert json.loads(lines[0])["prev"] == GENESIS


def test_the_hash_covers_the_line_without_its_hash() -> None:
    doc = json.loads(chain(1)[0])
    assert doc["hash"] == audit_chain.digest(doc) == audit_chain.digest({k: v for k, v in doc.items() if k != "hash"})


def _swap(lines: list[bytes], i: int, j: int) -> list[bytes]:
    out = list(lines)
    out[i], out[j] = out[j], out[i]
    return out


def _rehashed(line: bytes, **changes: Any) -> bytes:
    """An edit whose author also recomputed the line's own hash."""
    doc = {k: v for k, v in json.loads(line).items() if k != "hash"}
    doc.update(changes)
    return audit_chain.canonical({**doc, "hash": audit_chain.digest(doc)}) + b"\n"


L = chain(6)
INSERTED = _rehashed(L[2], alert_id="forged", prev=json.loads(L[2])["hash"])  # links to line 3 like line 4 does


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([L[0], edited(L[1], alert_id="forged"), *L[2:]], [(2, "edited")]),
        ([L[0], _rehashed(L[1], alert_id="forged"), *L[2:]], [(3, "chain broken")]),  # own hash fixed: next link
        ([L[0], L[1], *L[3:]], [(3, "chain broken")]),  # line 3 deleted
        ([*L[1:]], [(1, "the chain does not start here (prev is not the genesis value)")]),  # first line deleted
        ([*L[:3], INSERTED, *L[3:]], [(5, "chain broken")]),  # a forged line inserted after line 3
        (_swap(L, 2, 3), [(3, "chain broken"), (4, "chain broken"), (5, "chain broken")]),  # two lines moved
        ([*L[:5], L[5].rstrip(b"\n")], [(6, "the last line is incomplete (no newline)")]),
        ([L[0], b"not json\n", *L[2:]], [(2, "not an audit record (not a JSON object with hash and prev)")]),
        (
            [L[0], _rehashed(L[1], body="{}"), *L[2:]],
            [(2, "its body does not match its digest (written so, or edited with a new hash)"), (3, "chain broken")],
        ),
    ],
    ids=["edited", "edited-rehashed", "deleted", "first-deleted", "inserted", "reordered", "cut", "garbage", "body"],
)
def test_each_kind_of_tampering_is_found_at_its_line(lines: list[bytes], expected: list[tuple[int, str]]) -> None:
    assert problems(lines) == expected


def test_a_broken_link_names_the_earlier_line_it_points_to() -> None:
    inserted = [*L[:3], INSERTED, *L[3:]]
    assert [str(p) for p in verify(inserted).problems] == [
        "line 5: chain broken: prev is the hash of line 3, not of line 4 (a line was inserted, or lines were moved)"
    ]


def test_an_anchored_head_finds_lines_removed_at_the_end() -> None:
    head = json.loads(L[4])["hash"]
    assert verify(L[:5], anchor=head).intact
    grown = verify(L, anchor=head)
    assert grown.intact  # lines appended since the anchor: still intact
    assert grown.anchor_line == 5
    assert verify(L[:4]).intact  # without the anchor a cut end goes unseen
    assert problems(L[:4], anchor=head) == [(4, "the anchored head " + head + " is not in the trail")]


def test_the_tail_of_a_trail_is_checked_before_it_is_continued(tmp_path: Path) -> None:
    trail = tmp_path / "audit.jsonl"
    trail.touch()
    assert audit_chain.tail(trail) is None
    trail.write_bytes(b"".join(L))
    assert audit_chain.tail(trail) == (6, json.loads(L[-1])["hash"])
    trail.write_bytes(b"".join([*L[:5], edited(L[5], alert_id="forged")]))
    with pytest.raises(audit_chain.AuditError, match=r"does not verify at its end \(edited"):
        audit_chain.tail(trail)
    trail.write_bytes(b"".join([*L[:4], L[5]]))  # the line before the last was deleted
    with pytest.raises(audit_chain.AuditError, match="chain broken"):
        audit_chain.tail(trail)
    trail.write_bytes(b"".join(L)[:-10])  # a crash in the middle of the last write
    with pytest.raises(audit_chain.AuditError, match="incomplete"):
        audit_chain.tail(trail)


def test_the_tail_reads_lines_longer_than_its_read_block(tmp_path: Path) -> None:
    lines, prev = [], GENESIS
    for seq in (1, 2, 3):
        body = "x" * 200_000
        record = {"v": 1, "kind": "alert", "seq": seq, "body": body, "digest": audit_chain.body_digest(body.encode())}
        line, prev = seal(record, prev)
        lines.append(line)
    trail = tmp_path / "audit.jsonl"
    trail.write_bytes(b"".join(lines))
    assert audit_chain.tail(trail) == (3, prev)


STEP = {
    "rule": "R",
    "action": "Mark",
    "actionner": "kubernetes:label",
    "parameters": {"labels": {"a": "1"}},
    "continue": True,
    "ignore_errors": False,
    "dry_run": False,
    "output": None,
    "notifiers": [],
}
TERMINATE = {**STEP, "action": "Kill", "actionner": "kubernetes:terminate", "parameters": {}}


def plan(rules: list[str], *steps: dict[str, Any]) -> dict[str, Any]:
    return {"matched_rules": rules, "steps": list(steps)}


def test_the_same_plan_is_no_difference() -> None:
    assert compare(plan(["R"], STEP, TERMINATE), plan(["R"], STEP, TERMINATE)) is None
    assert compare(plan([]), plan([])) is None


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        (
            plan(["R"], STEP),
            plan([]),
            {
                "matched_rules": {"before": ["R"], "after": [], "added": [], "removed": ["R"]},
                "steps": {
                    "added": [],
                    "removed": [{"rule": "R", "action": "Mark", "actionner": "kubernetes:label"}],
                    "changed": [],
                    "reordered": False,
                },
            },
        ),
        (
            plan(["R"], STEP),
            plan(["R"], {**STEP, "parameters": {"labels": {"a": "2"}}, "dry_run": True}),
            {
                "matched_rules": {"before": ["R"], "after": ["R"], "added": [], "removed": []},
                "steps": {
                    "added": [],
                    "removed": [],
                    "changed": [
                        {
                            "rule": "R",
                            "action": "Mark",
                            "fields": {
                                "parameters": {"before": {"labels": {"a": "1"}}, "after": {"labels": {"a": "2"}}},
                                "dry_run": {"before": False, "after": True},
                            },
                        }
                    ],
                    "reordered": False,
                },
            },
        ),
        (
            plan(["R"], STEP, TERMINATE),
            plan(["R"], TERMINATE, STEP),
            {
                "matched_rules": {"before": ["R"], "after": ["R"], "added": [], "removed": []},
                "steps": {"added": [], "removed": [], "changed": [], "reordered": True},
            },
        ),
        (
            None,  # the recorded alert was never decided (OPA failed)
            plan([]),
            {
                "matched_rules": {"before": None, "after": [], "added": [], "removed": []},
                "steps": {"added": [], "removed": [], "changed": [], "reordered": False},
            },
        ),
    ],
    ids=["rule-removed", "parameters-changed", "reordered", "undecided"],
)
def test_a_different_plan_is_described_field_by_field(
    before: dict[str, Any] | None, after: dict[str, Any], expected: dict[str, Any]
) -> None:
    assert compare(before, after) == expected


def _segments(folder: Path, lines: list[bytes], ranges: list[tuple[int, int]], trail: str = "ab" * 8) -> None:
    folder.mkdir(exist_ok=True)
    for n, (first, last) in enumerate(ranges):
        name = f"2026-12-03T10-0{n}-00Z_{audit_segments.name(trail, first, last)}"
        (folder / name).write_bytes(b"".join(lines[first - 1 : last]))


def test_segments_shipped_again_after_a_crash_are_left_out_once_identical(tmp_path: Path) -> None:
    lines = chain(12)
    # 1-2 and 3 shipped, a crash before 3's progress was saved: 3-6 shipped again with the lines after it
    _segments(tmp_path / "s", lines, [(1, 2), (3, 3), (3, 6), (7, 12)])
    merged = audit_segments.Merged()
    trails = audit_segments.in_folder(tmp_path / "s")
    assert list(trails) == ["ab" * 8]
    assert b"".join(audit_segments.lines(trails["ab" * 8], merged)) == b"".join(lines)
    assert (merged.duplicates, merged.problems) == (1, [])
    assert audit_cli.verify(tmp_path / "s", "") == 0


def test_a_segment_shipped_again_with_other_content_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = chain(6)
    folder = tmp_path / "s"
    _segments(folder, lines, [(1, 3), (4, 6)])
    forged = chain(6)
    forged[3] = edited(forged[3], alert_id="forged")
    _segments(folder, forged, [(4, 4)])  # its name sorts after the good 4-6: a duplicate that differs
    assert audit_cli.verify(folder, "") == 1
    out = capsys.readouterr().out
    assert "line seq 4 differs from the one shipped before" in out


def test_two_trails_in_a_folder_are_verified_apart(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _segments(tmp_path / "s", chain(3), [(1, 3)], trail="a" * 16)
    _segments(tmp_path / "s", chain(2), [(1, 2)], trail="b" * 16)
    assert audit_cli.verify(tmp_path / "s", "") == 0
    out = capsys.readouterr().out
    assert out.count("intact") == 2
    assert audit_cli.verify(tmp_path / "s", "0" * 64) == 2  # --head needs one trail
