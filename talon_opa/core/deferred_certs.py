"""TLS contexts made while importing a library that load the system's CA certificates on first use.

aiohttp builds its two default client contexts when it is imported (one verifying, one not), and each
parses every certificate of the system's CA bundle: about 80 ms of CPU, a sixth of `talon-opa server`'s
start-up at 10 rules, for contexts that only an https request without its own context uses (a
notifier's webhook, say) and maybe never. Imported inside `deferred()`, such a context loads the same
certificates, the same way (`set_default_verify_paths`), the first time it wraps a connection or is
asked for its certificates: later, never fewer.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
from collections.abc import Callable, Iterator
from typing import Any

_ORIGINAL = ssl.SSLContext.set_default_verify_paths
# what reads the trust store: the defaults must be loaded before any of these runs
_USES = ("wrap_socket", "wrap_bio", "get_ca_certs", "cert_store_stats")


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """While inside, `SSLContext.set_default_verify_paths` defers the loading to the context's first use.

    Only for a single-threaded import: the method is replaced on the class meanwhile.
    """
    own = "set_default_verify_paths" in vars(ssl.SSLContext)  # else inherited from _ssl._SSLContext
    ssl.SSLContext.set_default_verify_paths = _defer  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        if own:
            ssl.SSLContext.set_default_verify_paths = _ORIGINAL  # type: ignore[method-assign]
        else:
            del ssl.SSLContext.set_default_verify_paths


def pending(ctx: ssl.SSLContext) -> bool:
    """Whether the context has yet to load its default certificates."""
    return "wrap_bio" in vars(ctx)


def _defer(ctx: ssl.SSLContext) -> None:
    lock = threading.Lock()

    def load() -> None:
        with lock:
            if pending(ctx):
                for name in _USES:
                    delattr(ctx, name)
                _ORIGINAL(ctx)

    def first_use(name: str) -> Callable[..., Any]:
        method = getattr(ssl.SSLContext, name)

        def use(*args: Any, **kwargs: Any) -> Any:
            load()
            return method(ctx, *args, **kwargs)

        return use

    for name in _USES:
        setattr(ctx, name, first_use(name))  # an instance attribute: found before the class's method
