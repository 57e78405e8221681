"""Alert values in commands, shell-safe: the names Talon exposes, given to the child shell per step.

Talon (reference §2.10) exports every output field, context entry and PRIORITY/HOSTNAME/RULE/SOURCE/
TAGS into its own process environment and expands `$NAME` / `${NAME}` into the command *text* before
a shell parses it: a field holding `$(...)`, a backtick or `;` runs in the container, and a field absent
from this alert expands to the value a previous alert left.

Here the values never enter the command text nor the engine's environment. A command referencing
`${NAME}` (or `$NAME`) runs as

    <shell> -c "export NAME='<value, single-quoted>'\\n<command as written>"

so the container's shell expands the variable itself. The result of a shell expansion is never parsed
again as code: whatever the value holds arrives as data. Only the names the command references are
set, from this alert alone, so nothing leaks between alerts. A value holding NUL (which no argv can
carry) fails the step instead of running a command cut short.

The same names, expanded in Python, build `kubernetes:download`'s path (an argv element, no shell).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from talon_opa.core.errors import StepFailed
from talon_opa.core.events import Alert, value_text

# `$NAME` or `${NAME...}` (with any shell modifier after the name) where NAME is a shell identifier
_REFERENCE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)|([A-Za-z_][A-Za-z0-9_]*))")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Go's os.Expand, for paths: ${anything up to }} or $ followed by a run of letters, digits, underscores
_GO_EXPAND = re.compile(r"\$(?:\{([^}]*)\}|([A-Za-z0-9_]+))")
_TALON_CONTEXT_PREFIX = "FALCO-TALON_"  # Talon's context names keep their "-": usable only as ${FALCO-TALON_X}


def field_name(name: str) -> str:
    """Talon's variable name of an output field: upper case, `.` and `[` → `_`, `]` dropped."""
    return name.upper().replace(".", "_").replace("[", "_").replace("]", "")


def talon_names(alert: Alert) -> dict[str, str]:
    """Every name Talon's ExportEnvVars sets for this alert, with its value, in Talon's order."""
    env: dict[str, str] = {}
    for key, value in alert.output_fields.items():
        env[field_name(key)] = value_text(value)
    for key, value in alert.context.items():
        text = value_text(value)
        if text != "":
            env[key.upper().replace(".", "_")] = text
    env["PRIORITY"] = alert.priority
    env["HOSTNAME"] = alert.hostname
    env["RULE"] = alert.rule
    env["SOURCE"] = alert.source
    env["TAGS"] = ",".join(value_text(t) for t in alert.tags)
    return env


def environment(alert: Alert) -> dict[str, str]:
    """The names a command can use: Talon's, plus `FALCO_TALON_*` for its `FALCO-TALON_*` context names
    (a shell variable cannot hold a `-`). Names that are no shell identifier are left out."""
    env: dict[str, str] = {}
    for name, value in talon_names(alert).items():
        if name.startswith(_TALON_CONTEXT_PREFIX):
            name = "FALCO_TALON_" + name[len(_TALON_CONTEXT_PREFIX) :]
        if _IDENTIFIER.fullmatch(name):
            env[name] = value
    return env


def quote(value: str) -> str:
    """One shell word holding exactly `value` (POSIX single quotes; `'` written as `'\\''`)."""
    return "'" + value.replace("'", "'\\''") + "'"


def referenced(text: str) -> list[str]:
    """The variable names `text` references, in order of first use."""
    seen: dict[str, None] = {}
    for m in _REFERENCE.finditer(text):
        seen.setdefault(m.group(1) or m.group(2), None)
    return list(seen)


def _spelled_for_shell(text: str) -> str:
    """`${FALCO-TALON_X}` (Talon's spelling, which a shell reads as a default value) → `${FALCO_TALON_X}`."""
    return text.replace("${" + _TALON_CONTEXT_PREFIX, "${FALCO_TALON_")


def _check(name: str, value: str, what: str) -> None:
    if "\x00" in value:
        raise StepFailed(
            f"the alert's value for ${{{name}}} holds a NUL byte, which no {what} can carry",
            hint="nothing was run; drop the reference from the command or match alerts without it",
        )


def script(text: str, env: Mapping[str, str]) -> tuple[str, dict[str, str]]:
    """The shell text to run: an `export` of each referenced name known to this alert, then `text`.

    Returns the text and the variables it sets (for the step's span and log).
    """
    text = _spelled_for_shell(text)
    used = {name: env[name] for name in referenced(text) if name in env}
    for name, value in used.items():
        _check(name, value, "command")
    if not used:
        return text, used
    exports = "export " + " ".join(f"{name}={quote(value)}" for name, value in used.items())
    return exports + "\n" + text, used


def expand(text: str, env: Mapping[str, str]) -> str:
    """`text` with `${NAME}` / `$NAME` replaced by this alert's values (unknown: ""), as Go's os.ExpandEnv
    does, but from this alert only. For values that become one argv element, never shell text."""

    def one(m: re.Match[str]) -> str:
        name = m.group(1) if m.group(1) is not None else m.group(2)
        name = ("FALCO_TALON_" + name[len(_TALON_CONTEXT_PREFIX) :]) if name.startswith(_TALON_CONTEXT_PREFIX) else name
        value = env.get(name, "")
        _check(name, value, "path")
        return value

    return _GO_EXPAND.sub(one, text)
