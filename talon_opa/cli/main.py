"""`talon-opa` command line: Talon's shape (server, rules, actionners...) plus OPA-native commands.

Talon habits kept: `-c` and `-r` may come before or after the command (cobra's persistent flags);
`-r` files given in both places are all used, in command-line order, and of two `-c` the later one wins
(as a repeated cobra flag); `talon-opa check` is `talon-opa rules check` (Talon's first releases).
A `-c` file is read and validated whatever the command: a missing or invalid one is an error (exit 2;
`server` exits 1). `server` without `-c` reads Talon's default config file when it exists.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from talon_opa.cli import approve, completion, operator_api

if TYPE_CHECKING:  # `server` imports them inside compile_cache.cached()
    from talon_opa.core import config
    from talon_opa.engine import prestart

PROG = "talon-opa"
DEFAULT_CONFIG = "/etc/falco-talon/config.yaml"  # Talon's default for `server`
DEFAULT_CONFIG_ENV = "TALON_OPA_DEFAULT_CONFIG"  # another default path (tests, packaging)
EXIT_INVALID = 2  # invalid input, as argparse and `rules plan`
_LEVELS = 3  # root, command, subcommand: where -c and -r may appear

_EPILOG = f"""\
-c and -r may be given before or after the command, as with Talon: the -r files
of both places are merged in command-line order; of two -c the later one wins.
`{PROG} check` is `{PROG} rules check`.
`{PROG} server` without -c reads ${DEFAULT_CONFIG_ENV}, else
{DEFAULT_CONFIG}, when that file exists."""
_SERVER_EPILOG = f"""\
Without -c: reads ${DEFAULT_CONFIG_ENV} (default {DEFAULT_CONFIG})
when that file exists, else uses the built-in defaults and logs that no config
file was read. Environment variables override the file (Talon's names)."""


def _version() -> str:
    from importlib.metadata import version

    return f"{PROG} {version(PROG)}"


class _PrintVersion(argparse.Action):
    """`--version`: the version is looked up only when asked for."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        print(_version())
        parser.exit()


def _config_option(p: argparse.ArgumentParser, level: int, help: str = "config file (YAML), validated") -> None:
    # one dest per level: a subcommand's namespace replaces the root's values, so each level keeps its own
    p.add_argument(
        "-c",
        "--config",
        dest=f"config_{level}",
        default=argparse.SUPPRESS,
        metavar="FILE",
        type=completion.path,
        help=help,
    )


def _rules_option(p: argparse.ArgumentParser, level: int, *, required: bool) -> None:
    p.add_argument(
        "-r",
        "--rules",
        dest=f"rules_{level}",
        action="append",
        default=argparse.SUPPRESS,
        metavar="FILE",
        type=completion.path,
        help="rules file (repeatable, merged in order)" + (" (required)" if required else ""),
    )
    if required:
        p.set_defaults(rules_required_by=p)


def _rules_command_args(p: argparse.ArgumentParser, level: int) -> None:
    """-r (required) and -c of a command that reads rules."""
    _rules_option(p, level, required=True)
    _config_option(p, level)


class _Refused(Exception):
    """What a parser of `server` alone refuses: the whole command line then parses it again, and says why."""


class _ServerOnlyParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _Refused(message)


def build_parser(*, server_only: bool = False) -> argparse.ArgumentParser:
    """The whole command line (also walked by `completion`); with `server_only`, the root and `server` alone
    (refusing rather than exiting: `parse`)."""
    p = (_ServerOnlyParser if server_only else argparse.ArgumentParser)(
        prog=PROG,
        description=(__doc__ or "").splitlines()[0],
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action=_PrintVersion, nargs=0, help="print the version and exit (as `version`)")
    _config_option(p, 0, help="config file (YAML), for the command that follows")
    _rules_option(p, 0, required=False)
    sub = p.add_subparsers(dest="command", required=True)

    server = sub.add_parser(
        "server",
        help="run the response engine",
        description="Run the response engine.",
        epilog=_SERVER_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _config_option(
        server, 1, help=f"config file (YAML); default: ${DEFAULT_CONFIG_ENV} or {DEFAULT_CONFIG}, if it exists"
    )
    _rules_option(server, 1, required=False)
    if server_only:
        return p

    rules = sub.add_parser("rules", help="check, print, translate, plan or test rules")
    _config_option(rules, 1)
    _rules_option(rules, 1, required=False)
    rsub = rules.add_subparsers(dest="rules_command", required=True)
    check = rsub.add_parser("check", help="validate rules files, reporting every error at once")
    _rules_command_args(check, 2)
    prt = rsub.add_parser("print", help="print the merged rules as YAML")
    _rules_command_args(prt, 2)
    tr = rsub.add_parser("translate", help="write the Rego modules, data and manifest (a dir or .tar.gz)")
    _rules_command_args(tr, 2)
    tr.add_argument("-o", "--output", required=True, metavar="DIR|FILE.tar.gz", type=completion.path)
    tr.add_argument("--signing-key", metavar="PEM", type=completion.path, help="sign the bundle with this private key")
    tr.add_argument(
        "--rego", action="append", default=[], metavar="FILE|DIR", type=completion.path, help="native Rego rules to add"
    )
    tr.add_argument(
        "--form",
        choices=("auto", "modules", "data"),
        default="auto",
        help="a Rego module per rule, or the rules as data (auto, as the engine: data beyond 1,000 rules)",
    )
    plan = rsub.add_parser("plan", help="print the plan of each alert, decided by a real OPA")
    _rules_command_args(plan, 2)
    alerts = plan.add_mutually_exclusive_group(required=True)
    alerts.add_argument(
        "--event", metavar="FILE", type=completion.path, help="a JSON alert, or JSON lines ('-': stdin)"
    )
    alerts.add_argument(
        "--replay",
        metavar="AUDIT",
        type=completion.path,
        help="decide the alerts of an audit trail again; print those decided differently (exit 3)",
    )
    plan.add_argument(
        "--rego", action="append", default=[], metavar="FILE|DIR", type=completion.path, help="native Rego rules to add"
    )
    plan.add_argument(
        "--caps",
        metavar="CONFIG",
        type=completion.path,
        help="an engine config file whose caps:, approvals: and undo: sections the plan applies (docs/caps.md, "
        "docs/approvals.md, docs/undo.md; no counters: none ran)",
    )
    test = rsub.add_parser("test", help="run opa test over the library, the translated rules and yours")
    _rules_command_args(test, 2)
    test.add_argument(
        "paths", nargs="*", metavar="PATH", type=completion.path, help="your *_test.rego files or folders"
    )

    alias = sub.add_parser("check", help="the same as `rules check` (Talon's first releases had it here)")
    _rules_command_args(alias, 1)

    for kind in ("actionners", "outputs", "notifiers"):
        k = sub.add_parser(kind, help=f"list the {kind}")
        _config_option(k, 1)
        ksub = k.add_subparsers(dest="list_command", required=True)
        listing = ksub.add_parser("list", help=f"describe every {kind[:-1]}, its parameters and defaults")
        _config_option(listing, 2)

    audit = sub.add_parser("audit", help="verify an audit trail")
    asub = audit.add_subparsers(dest="audit_command", required=True)
    verify = asub.add_parser("verify", help="check the hash chain: print where it breaks (exit 1), or the head")
    verify.add_argument(
        "file",
        metavar="FILE",
        type=completion.path,
        help="the audit trail (audit.path), or a folder of its shipped segments (audit.output): each trail there",
    )
    verify.add_argument("--head", metavar="HASH", help="a head printed earlier: the trail must still contain it")

    rbac = sub.add_parser("rbac", help="print the least-privilege ClusterRole for the rules in use")
    _rules_option(rbac, 1, required=True)
    rbac.add_argument("--name", default="talon-opa", help="name of the ClusterRole")

    approve.add_commands(sub)
    undo = sub.add_parser(
        "undo",
        help="undo an alert's (or one action's) changes in the running engine, or list the pending undos",
        description="Undo the reversible actions of an alert (alert id) or of one action (action id) through the "
        "running engine's operator API, or list the pending undos and their TTLs (docs/undo.md).",
        epilog="The token: --token, else auth.operator_token ($AUTH_OPERATOR_TOKEN, else the -c file's). Exit 0: every "
        "action undone or already undone; 1: a conflict, a failure, an unknown id or a refusal; 2: bad arguments.",
    )
    _config_option(undo, 1, help="the engine's config file: its address, TLS and auth.operator_token")
    undo.add_argument("id", nargs="?", metavar="ID", help="an alert id, or an action id (<alert id>-<step index>)")
    undo.add_argument("--list", action="store_true", help="list the pending undos and their TTLs instead")
    operator_api.add_connection_args(undo)
    undo.add_argument("--json", action="store_true", help="print the API's JSON answer")

    sub.add_parser("version", help="print the version")
    comp = sub.add_parser(
        "completion",
        help="print a shell completion script",
        description="Print a completion script for the shell, generated from this command line.",
        epilog=f"""\
bash: source <({PROG} completion bash)    (e.g. in ~/.bashrc)
zsh:  source <({PROG} completion zsh)     (after compinit), or save it as _{PROG} in $fpath
fish: {PROG} completion fish | source     (or save it in ~/.config/fish/completions/)""",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    comp.add_argument("shell", choices=completion.SHELLS, help="the shell to complete for")
    return p


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line into one namespace: `rules` (every -r, in order), `config` (the last -c)."""
    args = _parse_server(argv) if _names_server(sys.argv[1:] if argv is None else argv) else None
    if args is None:
        args = build_parser().parse_args(argv)
    args.rules = [f for level in range(_LEVELS) for f in vars(args).pop(f"rules_{level}", [])]
    configs = [vars(args).pop(f"config_{level}") for level in range(_LEVELS) if hasattr(args, f"config_{level}")]
    args.config = configs[-1] if configs else None
    if args.command == "check":
        args.command, args.rules_command = "rules", "check"
    required_by: argparse.ArgumentParser | None = vars(args).pop("rules_required_by", None)
    if required_by is not None and not args.rules:
        required_by.error("the following arguments are required: -r/--rules")
    return args


def _names_server(argv: Sequence[str]) -> bool:
    """Whether the command is `server` and no help or version is asked for before it."""
    values = False  # the previous word was -c or -r: this one is its value
    for word in argv:
        if values:
            values = False
        elif word in ("-c", "--config", "-r", "--rules"):
            values = True
        elif not word.startswith("-"):
            return word == "server"
        elif not word.startswith(("-c", "--config=", "-r", "--rules=")):
            return False  # -h, --version, an abbreviation...: the whole parser
    return False


def _parse_server(argv: Sequence[str] | None) -> argparse.Namespace | None:
    """`server`'s command line, parsed without building every other command's parser (8 ms of start-up,
    docs/performance.md); None when that parser refuses it (the whole one then reports why)."""
    server_only = build_parser(server_only=True)
    try:
        return server_only.parse_args(argv)
    except _Refused:
        return None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if args.command == "server":
        return _server(args)
    if args.config is not None:
        from talon_opa.core import config

        try:
            config.load(args.config, rules=args.rules)
        except config.ConfigError as e:
            print(f"error: {_naming(args.config, e)}", file=sys.stderr)
            return EXIT_INVALID
    if args.command == "version":
        print(_version())
        return 0
    if args.command == "completion":
        sys.stdout.write(completion.script(build_parser(), args.shell))
        return 0
    if args.command == "rules":
        if args.rules_command in ("check", "print"):
            from talon_opa.cli import rules_check as cli_check

            return cli_check.main(args)
        if args.rules_command == "plan" and args.replay:
            from talon_opa.cli import replay as cli_replay

            return cli_replay.main(args)
        from talon_opa.cli import rules_bundle as cli_bundle

        return cli_bundle.main(args)
    if args.command == "audit":
        from talon_opa.cli import audit as cli_audit

        return cli_audit.main(args)
    if args.command in ("approvals", "approve", "deny"):
        return approve.main(args)
    if args.command == "undo":
        from talon_opa.cli import undo as cli_undo

        return cli_undo.main(args)
    if args.command in ("actionners", "outputs", "notifiers", "rbac"):
        from talon_opa.cli import lists as cli_list

        return cli_list.main(args)
    raise AssertionError(args.command)


def _server(args: argparse.Namespace) -> int:
    """`server`: Talon's default config file when -c is omitted and it exists, else the built-in defaults.

    Start-up is ordered for time (docs/performance.md): the bundle is built and the child OPA spawned
    (engine/prestart.py) before the rest of the engine is imported, so OPA loads it meanwhile.
    """
    gc.disable()  # importing makes only long-lived objects: nothing to collect (server.main enables it)
    try:
        return _start_server(args)
    finally:
        gc.enable()


def _start_server(args: argparse.Namespace) -> int:
    from talon_opa.core import compile_cache, deferred_certs

    # dataclass methods and regular expressions compiled at an earlier start; the CA certificates of the TLS
    # contexts aiohttp makes when imported, loaded when first used
    with compile_cache.cached(), deferred_certs.deferred():
        head_start = _prestart(args)  # imports neither aiohttp nor the engine's serving parts
        if head_start is None:
            return 1
        from talon_opa.engine import server  # the rest of the engine, imported while OPA starts

    return server.main(*head_start)


def _import_aiohttp() -> None:
    from talon_opa.core import deferred_certs

    with deferred_certs.deferred():  # its default TLS contexts read the CA certificates when first used
        import aiohttp  # noqa: F401


def import_server() -> None:
    """Import what `server` imports before it is ready, every shipped plugin included: a start imports those
    its rules and config use (cli/compile_table.py)."""
    _import_aiohttp()
    from talon_opa.catalog import default_registry
    from talon_opa.core import config, logs  # noqa: F401
    from talon_opa.engine import prestart, server  # noqa: F401
    from talon_opa.translator import rules  # noqa: F401 (when a bundle is built)

    for _ in default_registry().specs():
        pass


def _prestart(args: argparse.Namespace) -> tuple[config.Config, prestart.Prestart] | None:
    """The config read and the child OPA spawned on the first bundle; None once the reason is reported."""
    from talon_opa.core import config, logs

    looked_at = None
    if args.config is None:
        default = os.environ.get(DEFAULT_CONFIG_ENV) or DEFAULT_CONFIG
        if Path(default).exists():
            args.config = default
        else:
            looked_at = default
    try:
        cfg = config.load(args.config, rules=args.rules)
    except config.ConfigError as e:
        print(f"error: {_naming(args.config, e)}", file=sys.stderr)
        return None
    logs.setup(cfg.log_format, cfg.log_level)
    if looked_at is not None:
        logs.get("cli").info(
            "no config file read: built-in defaults and environment variables",
            extra={"looked_at": looked_at, "hint": f"write {looked_at}, set ${DEFAULT_CONFIG_ENV} or pass -c FILE"},
        )
    from talon_opa.engine import prestart

    head_start = prestart.prestart_or_log(cfg)
    return None if head_start is None else (cfg, head_start)


def _naming(path: str | None, e: Exception) -> str:
    """The error, with the config file's name in front unless it already says it."""
    text = str(e)
    return f"{path}: {text}" if path and path not in text else text


if __name__ == "__main__":
    sys.exit(main())
