"""Secrets never leave the process in clear: every log line, span text and startup error is scrubbed.

Values become known as secrets where they are read: the configuration's secret keys, and the plugin
parameters and notifier settings declared `param(secret=True)`. `scrub` replaces each known value
(4 characters or more: shorter ones would blank out ordinary words) by `<redacted>`. The password of
any URL's user info (`scheme://user:password@host`, even in a malformed URL) is redacted too, known or not.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

REDACTED = "<redacted>"
MIN_LENGTH = 4
# scheme, optional slashes, user, ":" then the password up to "@"
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*:/*[^\s/@:'\"<>]*:)[^\s/@'\"<>]+@")


class Secrets:
    """A set of secret values and the scrubbing of text that may contain them."""

    def __init__(self) -> None:
        self._values: tuple[str, ...] = ()  # longest first, so a secret inside another is not left half-done

    def add(self, values: Iterable[str]) -> None:
        known = set(self._values)
        known.update(v for v in values if len(v) >= MIN_LENGTH)
        self._values = tuple(sorted(known, key=len, reverse=True))

    def scrub(self, text: str) -> str:
        for value in self._values:
            if value in text:
                text = text.replace(value, REDACTED)
        if "@" in text:
            text = _URL_PASSWORD.sub(rf"\1{REDACTED}@", text)
        return text

    def __len__(self) -> int:
        return len(self._values)


KNOWN = Secrets()  # the process's secrets: the log formatters and the span helpers scrub with it
