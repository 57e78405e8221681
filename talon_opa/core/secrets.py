"""Secrets never leave the process in clear: every log line, span text and startup error is scrubbed.

Values become known as secrets where they are read: the configuration's secret keys, and the plugin
parameters and notifier settings declared `param(secret=True)`. `scrub` replaces each known value
(4 characters or more: shorter ones would blank out ordinary words) by `<redacted>`.
"""

from __future__ import annotations

from collections.abc import Iterable

REDACTED = "<redacted>"
MIN_LENGTH = 4


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
        return text

    def __len__(self) -> int:
        return len(self._values)


KNOWN = Secrets()  # the process's secrets: the log formatters and the span helpers scrub with it
