"""`talon-opa` command line: Talon's shape (server, rules, actionners...) plus OPA-native commands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="talon-opa", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def rules_arg(sp: argparse.ArgumentParser, required: bool = True) -> None:
        sp.add_argument(
            "-r",
            "--rules",
            action="append",
            default=[],
            required=required,
            metavar="FILE",
            help="rules file (repeatable, merged in order)",
        )

    server = sub.add_parser("server", help="run the response engine")
    server.add_argument("-c", "--config", metavar="FILE", help="config file (YAML)")
    rules_arg(server, required=False)

    rules = sub.add_parser("rules", help="check, print, translate, plan or test rules")
    rsub = rules.add_subparsers(dest="rules_command", required=True)
    check = rsub.add_parser("check", help="validate rules files, reporting every error at once")
    rules_arg(check)
    check.add_argument("-c", "--config", metavar="FILE", help="accepted for Talon compatibility")
    prt = rsub.add_parser("print", help="print the merged rules as YAML")
    rules_arg(prt)
    prt.add_argument("-c", "--config", metavar="FILE", help="accepted for Talon compatibility")
    tr = rsub.add_parser("translate", help="write the Rego modules, data and manifest (a dir or .tar.gz)")
    rules_arg(tr)
    tr.add_argument("-o", "--output", required=True, metavar="DIR|FILE.tar.gz")
    tr.add_argument("--signing-key", metavar="PEM", help="sign the bundle with this private key")
    tr.add_argument("--rego", action="append", default=[], metavar="FILE|DIR", help="native Rego rules to add")
    plan = rsub.add_parser("plan", help="print the plan of each alert, decided by a real OPA")
    rules_arg(plan)
    plan.add_argument("--event", required=True, metavar="FILE", help="a JSON alert, or JSON lines ('-': stdin)")
    plan.add_argument("--rego", action="append", default=[], metavar="FILE|DIR", help="native Rego rules to add")
    test = rsub.add_parser("test", help="run opa test over the library, the translated rules and yours")
    rules_arg(test)
    test.add_argument("paths", nargs="*", metavar="PATH", help="your *_test.rego files or folders")

    for kind in ("actionners", "outputs", "notifiers"):
        k = sub.add_parser(kind, help=f"list the {kind}")
        ksub = k.add_subparsers(dest="list_command", required=True)
        ksub.add_parser("list", help=f"describe every {kind[:-1]}, its parameters and defaults")

    rbac = sub.add_parser("rbac", help="print the least-privilege ClusterRole for the rules in use")
    rules_arg(rbac)
    rbac.add_argument("--name", default="talon-opa", help="name of the ClusterRole")

    sub.add_parser("version", help="print the version")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "version":
        from importlib.metadata import version

        print(f"talon-opa {version('talon-opa')}")
        return 0
    if args.command == "rules":
        if args.rules_command in ("check", "print"):
            from talon_opa.cli import rules_check as cli_check

            return cli_check.main(args)
        from talon_opa.cli import rules_bundle as cli_bundle

        return cli_bundle.main(args)
    if args.command in ("actionners", "outputs", "notifiers", "rbac"):
        from talon_opa.cli import lists as cli_list

        return cli_list.main(args)
    if args.command == "server":
        from talon_opa.engine import server

        return server.main(args)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
