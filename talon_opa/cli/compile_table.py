"""`python -m talon_opa.cli.compile_table`: what `talon-opa server` compiles at each start, compiled and kept.

The table of `talon_opa/core/compile_cache.py` is written beside the bytecode when a start compiles
something new; an installed image writes nothing when it runs (a read-only filesystem, and the Dockerfile's
PYTHONDONTWRITEBYTECODE). Its build runs this instead, once the package is installed: it imports what the
server imports before it is ready, inside `compile_cache.cached()`, so the table holds their methods and
regular expressions.
"""

from __future__ import annotations

import sys

from talon_opa.cli import main as cli_main
from talon_opa.core import compile_cache


def main() -> int:
    with compile_cache.cached():
        cli_main.import_server()
    path = compile_cache.table_path()
    print(f"compile table: {path}" if path is not None and path.exists() else "compile table: not written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
