"""Talon users' command-line habits, run as a process: flags before or after the command, `check`,
`completion bash|zsh|fish`, the default config file of `server`, and `-c` files that are missing or invalid."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from talon_opa.cli import completion
from talon_opa.cli import main as cli
from tests.harness.paths import REPO, SEED_RULES

SUBCOMMANDS = [c.path[-1] for c in completion.commands(cli.build_parser()) if c.path]
RULE = """\
- rule: {name}
  match:
    rules: [{name}]
  actions:
    - action: Label {name}
      actionner: kubernetes:label
      parameters:
        labels: {{seen: "true"}}
"""


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), **extra}


def run(*args: str, cwd: Path = REPO, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "talon_opa.cli.main", *args],
        cwd=cwd,
        env=env(**extra),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def rules_ab(tmp_path: Path) -> tuple[str, str]:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(RULE.format(name="A"))
    b.write_text(RULE.format(name="B"))
    return str(a), str(b)


@pytest.fixture
def configs(tmp_path: Path) -> dict[str, str]:
    files = {
        "good": "log_format: text\n",
        "not_yaml": "listen_port: [1\n",
        "not_a_mapping": "- listen_port\n",
        "bad_value": "listen_port: not-a-port\n",
    }
    for name, text in files.items():
        (tmp_path / f"{name}.yaml").write_text(text)
    return {name: str(tmp_path / f"{name}.yaml") for name in [*files, "missing"]}


# --- flags before or after the command ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("rules", "check", "-r", "SEED"),
        ("-r", "SEED", "rules", "check"),
        ("rules", "-r", "SEED", "check"),
        ("-c", "GOOD", "-r", "SEED", "rules", "check"),
        ("--rules=SEED", "rules", "check", "--config", "GOOD"),
        ("check", "-r", "SEED"),
        ("-r", "SEED", "check"),
    ],
)
def test_rules_check_takes_its_flags_before_or_after_the_command(
    args: tuple[str, ...], configs: dict[str, str]
) -> None:
    argv = [a.replace("SEED", str(SEED_RULES)).replace("GOOD", configs["good"]) for a in args]
    done = run(*argv)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == "5 rules valid"


@pytest.mark.parametrize(
    ("args", "order"),
    [
        (("-r", "A", "rules", "print", "-r", "B"), ["A", "B"]),
        (("-r", "B", "rules", "print", "-r", "A"), ["B", "A"]),
        (("-r", "B", "rules", "-r", "A", "print"), ["B", "A"]),
        (("-r", "A", "-r", "B", "rules", "print"), ["A", "B"]),
        (("rules", "print", "-r", "B", "--rules", "A"), ["B", "A"]),
    ],
)
def test_rules_files_before_and_after_the_command_all_count_in_command_line_order(
    args: tuple[str, ...], order: list[str], rules_ab: tuple[str, str]
) -> None:
    a, b = rules_ab
    done = run(*[{"A": a, "B": b}.get(x, x) for x in args])
    assert done.returncode == 0, done.stderr
    assert [r["rule"] for r in yaml.safe_load(done.stdout)] == order


def test_check_is_rules_check(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("- rule: R\n  actions:\n    - action: Kill\n      actionner: kubernetes:terminat\n")
    alias, full = run("check", "-r", str(bad)), run("rules", "check", "-r", str(bad))
    assert (alias.returncode, alias.stdout) == (full.returncode, full.stdout) == (1, full.stdout)
    assert full.stdout.splitlines()[-1] == "1 problem found: invalid rules"


@pytest.mark.parametrize("args", [("rules", "check"), ("check",), ("rules", "print"), ("rbac",)])
def test_rules_files_stay_required_somewhere(args: tuple[str, ...], configs: dict[str, str]) -> None:
    done = run("-c", configs["good"], *args)
    assert done.returncode == 2
    assert f"usage: talon-opa {' '.join(args)}" in done.stderr
    assert "the following arguments are required: -r/--rules" in done.stderr


def test_of_two_configs_the_later_one_wins(configs: dict[str, str]) -> None:
    later_good = run("-c", configs["bad_value"], "rules", "check", "-c", configs["good"], "-r", str(SEED_RULES))
    assert later_good.returncode == 0, later_good.stderr
    later_bad = run("-c", configs["good"], "check", "-r", str(SEED_RULES), "-c", configs["bad_value"])
    assert later_bad.returncode == 2
    assert configs["bad_value"] in later_bad.stderr


# --- -c files that are missing or invalid -------------------------------------------------------------------


def config_error(args: tuple[str, ...], path: str) -> str:
    """Run with CFG replaced by `path`; the command must fail with exit code 2, saying why on stderr only."""
    done = run(*[a.replace("SEED", str(SEED_RULES)).replace("CFG", path) for a in args])
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == ""
    assert done.stderr.startswith("error: ")
    assert "Traceback" not in done.stderr
    return done.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("rules", "check", "-r", "SEED", "-c", "CFG"),
        ("rules", "print", "-r", "SEED", "-c", "CFG"),
        ("-c", "CFG", "rules", "check", "-r", "SEED"),
        ("check", "-c", "CFG", "-r", "SEED"),
        ("actionners", "list", "-c", "CFG"),
    ],
)
def test_a_missing_config_is_an_error_naming_it(args: tuple[str, ...], configs: dict[str, str]) -> None:
    said = config_error(args, configs["missing"])
    assert said.startswith(f"error: cannot read config file {configs['missing']}: No such file or directory")


@pytest.mark.parametrize(("kind", "why"), [("not_yaml", "not valid YAML"), ("not_a_mapping", "not a mapping"),
                                           ("bad_value", "config key 'listen_port'")])  # fmt: skip
def test_an_invalid_config_is_an_error_naming_it(kind: str, why: str, configs: dict[str, str]) -> None:
    said = config_error(("rules", "check", "-r", "SEED", "-c", "CFG"), configs[kind])
    assert configs[kind] in said
    assert why in said


@pytest.mark.parametrize("kind", ["missing", "bad_value"])
def test_server_with_a_missing_or_invalid_config_exits_1_naming_it(kind: str, configs: dict[str, str]) -> None:
    done = run("server", "-c", configs[kind], "-r", str(SEED_RULES))
    assert done.returncode == 1
    assert done.stderr.startswith("error: ")
    assert configs[kind] in done.stderr


# --- the default config file of `server` --------------------------------------------------------------------


def test_server_reads_the_default_config_file_when_it_exists(configs: dict[str, str], tmp_path: Path) -> None:
    # missing rules stop the server right after its config is loaded; the log format says which config it read
    done = run("server", "-r", str(tmp_path / "no-rules.yaml"), TALON_OPA_DEFAULT_CONFIG=configs["good"])
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert " ERRO invalid rules " in lines[0]
    assert not any(line.startswith("{") for line in lines), "log_format: text was applied"
    assert "no config file read" not in done.stderr


def test_server_names_an_invalid_default_config(configs: dict[str, str]) -> None:
    done = run("server", "-r", str(SEED_RULES), TALON_OPA_DEFAULT_CONFIG=configs["bad_value"])
    assert done.returncode == 1
    assert done.stderr.startswith(f"error: {configs['bad_value']}: config key 'listen_port'")


def test_server_without_a_config_file_logs_where_it_looked(configs: dict[str, str], tmp_path: Path) -> None:
    done = run("server", "-r", str(tmp_path / "no-rules.yaml"), TALON_OPA_DEFAULT_CONFIG=configs["missing"])
    assert done.returncode == 1
    logged = [json.loads(line) for line in done.stderr.splitlines()]
    said = [line for line in logged if line["message"].startswith("no config file read")]
    assert len(said) == 1
    assert said[0]["looked_at"] == configs["missing"]
    assert said[0]["level"] == "info"
    assert logged[1]["message"] == "invalid rules", "then the server goes on with the built-in defaults"


def test_the_default_config_path_is_documented_in_the_help() -> None:
    for args in (("--help",), ("server", "--help")):
        done = run(*args)
        assert done.returncode == 0
        assert cli.DEFAULT_CONFIG_ENV in done.stdout
        assert cli.DEFAULT_CONFIG in done.stdout


# --- help and version ---------------------------------------------------------------------------------------


def test_every_command_has_a_help_that_names_its_subcommands_and_flags(capsys: pytest.CaptureFixture[str]) -> None:
    for command in completion.commands(cli.build_parser()):
        with pytest.raises(SystemExit) as exited:
            cli.main([*command.path, "--help"])
        assert exited.value.code == 0
        text = capsys.readouterr().out
        assert text.startswith(f"usage: {' '.join(['talon-opa', *command.path])}")
        for name in command.words():
            assert name in text
        for flag in command.flags():
            assert flag in text


def test_version_flag_is_the_version_command() -> None:
    flag, command = run("--version"), run("version")
    assert flag.returncode == command.returncode == 0
    assert flag.stdout == command.stdout
    assert flag.stdout.startswith("talon-opa ")


# --- completion ---------------------------------------------------------------------------------------------


@pytest.fixture
def on_path(tmp_path: Path) -> dict[str, str]:
    """An environment where `talon-opa` is this checkout's command line, and a folder with a few files."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "talon-opa"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m talon_opa.cli.main "$@"\n')
    shim.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    for name in ("config.yaml", "rules.yaml", "rules-extra.yaml"):
        (work / name).write_text("")
    return env(PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")


def bash_complete(e: dict[str, str], cwd: Path, *words: str) -> list[str]:
    """What bash offers for `talon-opa WORDS...<TAB>` (the last word is the one being completed)."""
    script = (
        "source <(talon-opa completion bash) || exit 9\n"
        'COMP_WORDS=(talon-opa "$@"); COMP_CWORD=$#; COMP_LINE="${COMP_WORDS[*]}"; COMP_POINT=${#COMP_LINE}\n'
        "_talon_opa\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    done = subprocess.run(
        ["bash", "-c", script, "bash", *words], cwd=cwd, env=e, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return sorted(line for line in done.stdout.splitlines() if line)


def test_the_bash_script_loads_and_registers_the_command(on_path: dict[str, str]) -> None:
    done = subprocess.run(
        ["bash", "-c", "source <(talon-opa completion bash) && complete -p talon-opa"],
        env=on_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "complete -F _talon_opa talon-opa"


@pytest.mark.parametrize(
    ("words", "offered"),
    [
        (("ru",), ["rules"]),
        (("r",), ["rbac", "rules"]),
        (("rules", ""), ["check", "plan", "print", "test", "translate"]),
        (("rules", "check", "--"), ["--config", "--help", "--rules"]),
        (("-r", "x.yaml", "ru"), ["rules"]),
        (("rules", "-r", "x.yaml", "p"), ["plan", "print"]),
        (("--version", "ve"), ["version"]),
        (("completion", ""), ["bash", "fish", "zsh"]),
        (("actionners", ""), ["list"]),
        (("rules", "check", "-r", "rul"), ["rules-extra.yaml", "rules.yaml"]),
        (("-c", ""), ["config.yaml", "rules-extra.yaml", "rules.yaml"]),
        (("rules", "plan", "--event", "c"), ["config.yaml"]),
        (("rules", "translate", "-o", "c"), ["config.yaml"]),
        (("rules", "check", "--config", "=", "c"), ["config.yaml"]),  # --config=c<TAB>: bash splits at '='
        (("rules", "test", "c"), ["config.yaml"]),
        (("rbac", "--name", ""), []),
        (("version", ""), []),
    ],
)
def test_bash_completes_commands_flags_and_files(
    on_path: dict[str, str], tmp_path: Path, words: tuple[str, ...], offered: list[str]
) -> None:
    assert bash_complete(on_path, tmp_path / "work", *words) == offered


@pytest.mark.parametrize("shell", completion.SHELLS)
def test_every_completion_script_names_every_subcommand(shell: str) -> None:
    done = run("completion", shell)
    assert done.returncode == 0, done.stderr
    for name in SUBCOMMANDS:
        assert name in done.stdout
    if shutil.which(shell):  # a syntax check where the shell is installed
        check = subprocess.run([shell, "-n"], input=done.stdout, capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stderr


ZSH_STUBS = """\
compdef() { : }
_describe() { local a=${@[-1]}; print -rl -- ${(M)${(P)a}:#${words[CURRENT]}*} }
compadd() { shift; print -rl -- ${(M)@:#${words[CURRENT]}*} }
_files() { print -- FILES }
"""


@pytest.mark.skipif(not shutil.which("zsh"), reason="zsh is not installed")
@pytest.mark.parametrize(
    ("words", "offered"),
    [
        (("ru",), ["rules"]),
        (("rules", ""), ["check", "plan", "print", "test", "translate"]),
        (("-r", "x.yaml", "rules", "check", "--c"), ["--config"]),
        (("rules", "check", "-r", ""), ["FILES"]),
        (("rules", "translate", "--s"), ["--signing-key"]),
        (("rules", "plan", "--event", ""), ["FILES"]),
        (("completion", ""), ["bash", "fish", "zsh"]),
    ],
)
def test_zsh_completes_commands_flags_and_files(words: tuple[str, ...], offered: list[str]) -> None:
    script = run("completion", "zsh").stdout
    # words/CURRENT are plain variables outside a completion widget; the completion builtins are stubbed
    body = ZSH_STUBS + script + '\nwords=(talon-opa "$@"); CURRENT=$#words\n_talon_opa\n'
    done = subprocess.run(["zsh", "-f", "-c", body, "zsh", *words], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert sorted(line.split(":", 1)[0] for line in done.stdout.splitlines()) == offered  # name:description


@pytest.mark.skipif(not shutil.which("fish"), reason="fish is not installed")
@pytest.mark.parametrize(
    ("line", "offered"),
    [
        ("talon-opa ru", ["rules"]),
        ("talon-opa rules ", ["check", "plan", "print", "test", "translate"]),
        ("talon-opa -r x.yaml rules check --", ["--config", "--help", "--rules"]),
        ("talon-opa rules check -r rul", ["rules-extra.yaml", "rules.yaml"]),
        ("talon-opa rules translate --s", ["--signing-key"]),
        ("talon-opa rules plan --event c", ["config.yaml"]),
        ("talon-opa completion ", ["bash", "fish", "zsh"]),
        ("talon-opa version ", []),
    ],
)
def test_fish_completes_commands_flags_and_files(
    on_path: dict[str, str], tmp_path: Path, line: str, offered: list[str]
) -> None:
    done = subprocess.run(
        ["fish", "--no-config", "-c", "talon-opa completion fish | source; complete -C$argv[1]", line],
        cwd=tmp_path / "work",
        env=on_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(c.split("\t", 1)[0] for c in done.stdout.splitlines()) == offered


@pytest.mark.parametrize(
    ("argv", "fast"),
    [
        (("server",), True),
        (("server", "-c", "a.yaml", "-r", "x.yaml", "-r", "y.yaml"), True),
        (("-c", "a.yaml", "-r", "x.yaml", "server", "--rules=y.yaml", "--config", "b.yaml"), True),
        (("-ca.yaml", "--rules=x.yaml", "server", "-ry.yaml"), True),
        (("server", "-h"), True),
        (("server", "--bogus"), False),  # refused: the whole parser says why
        (("server", "-c"), False),
        (("server", "extra"), False),
        (("--help", "server"), False),
        (("--version", "server"), False),
        (("--conf", "a.yaml", "server"), False),  # an abbreviation: the whole parser
        (("rules", "check", "-r", "x.yaml"), False),
        (("-r", "server", "check"), False),  # "server" is -r's value: the command is `check`
    ],
)
def test_the_server_command_line_parses_as_the_whole_parser_parses_it(
    argv: tuple[str, ...], fast: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    """`server` is parsed without the other commands' parsers (start-up): the same namespace, the same help
    and the same errors as the whole command line gives; anything else is left to the whole parser."""

    def outcome(parse: Callable[[], object]) -> tuple[object, str, str]:
        try:
            result = parse()
        except SystemExit as e:
            result = ("exit", e.code)
        out = capsys.readouterr()
        return result, out.out, out.err

    whole = outcome(lambda: cli.build_parser().parse_args(argv))
    server_only = outcome(lambda: cli._parse_server(argv) if cli._names_server(argv) else "not server")
    if not fast:
        assert server_only[0] in (None, "not server")
        if isinstance(whole[0], tuple):  # an error, the help or the version: `parse` says the same
            assert outcome(lambda: cli.parse(argv)) == whole
        return
    assert server_only == whole
