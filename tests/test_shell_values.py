"""Alert values for commands (talon_opa/actionners/kubernetes/_shell.py): Talon's names, per alert, quoted."""

from __future__ import annotations

import subprocess

import pytest

from talon_opa.actionners.kubernetes import _shell
from talon_opa.core.errors import StepFailed
from talon_opa.core.events import Alert


@pytest.mark.parametrize(
    ("field", "name"),
    [
        ("proc.pid", "PROC_PID"),
        ("proc.aname[2]", "PROC_ANAME_2"),
        ("k8s.pod.label[app]", "K8S_POD_LABEL_APP"),
        ("fd.name", "FD_NAME"),
    ],
)
def test_field_names_are_talons(field: str, name: str) -> None:
    assert _shell.field_name(field) == name


def test_the_environment_holds_talons_names_from_this_alert_only() -> None:
    alert = Alert(
        rule="R",
        priority="Warning",
        hostname="h",
        source="syscall",
        tags=["a", "b"],
        output_fields={"proc.pid": 1234567, "evt.num": 1.5, "ok": True, "k8s.pod.label[a/b]": "x"},
        context={"falco-talon.action": "A", "empty": ""},
    )

    env = _shell.environment(alert)

    assert env == {
        "PROC_PID": "1234567",
        "EVT_NUM": "1.5",
        "OK": "true",
        "FALCO_TALON_ACTION": "A",
        "PRIORITY": "Warning",
        "HOSTNAME": "h",
        "RULE": "R",
        "SOURCE": "syscall",
        "TAGS": "a,b",
    }  # K8S_POD_LABEL_A/B is no shell name; an empty context value is dropped, as Talon does


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("kill -9 ${PROC_PID}", ["PROC_PID"]),
        ('echo "$A $B ${A:-x}" ${C#p}', ["A", "B", "C"]),
        ("echo '$A' \\$B $1 $$ ${", ["A", "B"]),  # referenced textually: quoting is the shell's business
    ],
)
def test_referenced_names(text: str, names: list[str]) -> None:
    assert _shell.referenced(text) == names


def test_the_script_exports_the_referenced_names_quoted() -> None:
    text, used = _shell.script("echo ${A} ${FALCO-TALON_X} $UNKNOWN", {"A": "it's", "FALCO_TALON_X": "x", "B": "b"})

    assert text == "export A='it'\\''s' FALCO_TALON_X='x'\necho ${A} ${FALCO_TALON_X} $UNKNOWN"
    assert used == {"A": "it's", "FALCO_TALON_X": "x"}


def test_a_command_without_references_is_unchanged() -> None:
    assert _shell.script("ps aux", {"A": "1"}) == ("ps aux", {})


@pytest.mark.parametrize("value", ["plain", "it's", "'", "''", "a\nb", "$(x) `y` ;|&", "\\", " ", ""])
def test_quote_gives_one_word_holding_the_value(value: str) -> None:
    out = subprocess.run(["sh", "-c", f"printf '%s' {_shell.quote(value)}"], capture_output=True, check=True)
    assert out.stdout == value.encode()


def test_expand_is_gos_expand_env_from_this_alert() -> None:
    env = {"FD_NAME": "/tmp/a b", "FALCO_TALON_ACTION": "A"}

    assert _shell.expand("${FD_NAME}", env) == "/tmp/a b"
    assert _shell.expand("$FD_NAME.bak", env) == "/tmp/a b.bak"
    assert _shell.expand("/x/${MISSING}/$MISSING", env) == "/x//"
    assert _shell.expand("${FALCO-TALON_ACTION}", env) == "A"
    assert _shell.expand("$", env) == "$"


def test_a_nul_in_a_used_value_fails() -> None:
    with pytest.raises(StepFailed, match=r"\$\{A\} holds a NUL byte"):
        _shell.script("echo $A", {"A": "a\x00b"})
    with pytest.raises(StepFailed, match=r"\$\{A\} holds a NUL byte, which no path can carry"):
        _shell.expand("$A", {"A": "a\x00b"})
    assert _shell.script("echo $B", {"A": "a\x00b", "B": "b"})[1] == {"B": "b"}
