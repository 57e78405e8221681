"""Deciding without OPA the alerts no rule can match, from the candidate index OPA serves.

`talon.lib.matching` evaluates only the candidates of an alert: the packages listed under the alert's
Falco rule in `data.talon.index.by_rule`, under any of its tags in `data.talon.index.by_tag`, in
`data.talon.index.always`, and every package of `data.talon.native`. An alert with no candidate has the
empty plan (`{"matched_rules": [], "steps": []}`), whatever else it holds. `CandidateIndex` is that
lookup, built from the values OPA returns for the bundle revision it serves; `Prefilter` keeps it
current (fetched again whenever the revision or the OPA endpoint changes) and says when an alert can
skip its OPA request. Whenever it cannot be sure, it says "ask OPA":

* the bundle holds the user's own Rego (`opa.rego`): such a module may add candidates of its own;
* the index has an `always` entry, native rules are registered, or a value has a shape it does not know;
* the index is not fetched yet, or OPA serves another revision than the one decisions should come from;
* the alert's rule or a tag is not valid Unicode (OPA would read it as another string).

The bundle's manifest owns the `talon` root, so no other bundle loaded in the same OPA can add to it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from talon_opa.core import logs
from talon_opa.core.errors import OpaError
from talon_opa.opa.client import OpaClient

log = logs.get("decide")

RETRY_S = 0.5  # wait before fetching the index again after OPA could not give it for the wanted revision


@dataclass(frozen=True, slots=True)
class CandidateIndex:
    """The keys of `data.talon.index` that give an alert candidates, for one bundle revision."""

    revision: str
    rule_keys: frozenset[str]
    tag_keys: frozenset[str]

    @classmethod
    def parse(cls, revision: str, lookups: Mapping[str, Any]) -> CandidateIndex | None:
        """The lookup from OPA's values of data.talon.index's `by_rule`, `by_tag`, `always` and of
        data.talon.native (None: undefined).

        None when some alert could have a candidate the lookup cannot see (always-candidates, native
        rules), or a value has another shape than the generator's (an index missing included).
        """
        by_rule, by_tag = lookups.get("by_rule"), lookups.get("by_tag")
        if not isinstance(by_rule, dict) or not isinstance(by_tag, dict):
            return None
        if not _empty(lookups.get("always")) or not _empty(lookups.get("native")):
            return None
        return cls(revision, frozenset(by_rule), frozenset(by_tag))  # a key with no package: still asked

    def no_candidate(self, rule: str, tags: Iterable[Any]) -> bool:
        """True when an alert with this Falco rule and these tags has no candidate (its plan is empty).

        `tags` as the alert holds them: like `input.tags_set`, only the strings count.
        """
        if rule in self.rule_keys or not (rule.isascii() or _exact(rule)):
            return False
        tag_keys = self.tag_keys
        for tag in tags:  # a plain loop: this runs for every alert
            if isinstance(tag, str) and (tag in tag_keys or not (tag.isascii() or _exact(tag))):
                return False
        return True


def _empty(value: Any) -> bool:
    """Whether iterating this value in Rego (`some x in value`) yields nothing for certain (None: undefined)."""
    return value is None or (isinstance(value, (list, dict)) and not value)


def _exact(text: str) -> bool:
    """Whether OPA reads the string as this very text: a lone surrogate becomes U+FFFD in Go."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class _Current:
    revision: str
    served: str  # the revisions of every bundle OPA serves, as a plan OPA decides names them ("a,b")
    index: CandidateIndex | None  # None: this revision cannot be prefiltered
    endpoint: object  # the OPA endpoint it was fetched from (a restarted child is asked again)
    checked: float  # time.monotonic() when OPA last confirmed the revision


class Prefilter:
    """The current candidate index; `empty_plan_revision(rule, tags)` is the one question per alert.

    `revision()` is the bundle revision decisions should come from, `endpoint()` the OPA endpoint they
    go to (its identity changes when the child OPA is restarted or swapped). With `recheck_seconds`
    (a sidecar, which may restart on an older bundle), OPA's revision is confirmed again that often, and
    the index is not used while a confirmation is due. `run()` fetches; without it, nothing is prefiltered.
    """

    def __init__(
        self,
        client: OpaClient,
        *,
        revision: Callable[[], str],
        endpoint: Callable[[], object],
        enabled: bool = True,
        recheck_seconds: float = 0.0,
    ) -> None:
        self._client = client
        self._revision = revision
        self._endpoint = endpoint
        self.enabled = enabled
        self._recheck = recheck_seconds
        self._current: _Current | None = None
        self._stale = asyncio.Event()

    @property
    def client(self) -> OpaClient:
        return self._client

    @property
    def revision(self) -> str:
        """The revision whose index was fetched ("" before the first fetch, or when OPA left it)."""
        current = self._current
        return current.revision if current is not None else ""

    @property
    def index(self) -> CandidateIndex | None:
        """The index in use (None: every alert is asked to OPA)."""
        current = self._current
        return current.index if current is not None else None

    def empty_plan_revision(self, rule: str, tags: Iterable[Any]) -> str:
        """The revision(s) whose index proves the alert matches no rule, as OPA would name them in the plan;
        "" when OPA must decide."""
        if not self.enabled:
            return ""
        current = self._current
        try:
            endpoint = self._endpoint()
        except OpaError:
            return ""
        if (
            current is None
            or current.revision != self._revision()
            or current.endpoint is not endpoint
            or (self._recheck and time.monotonic() - current.checked > self._recheck)
        ):
            self._stale.set()
            return ""
        index = current.index
        if index is None or not index.no_candidate(rule, tags):
            return ""
        return current.served

    async def run(self) -> None:
        """Fetch the index whenever a lookup finds it stale (until cancelled)."""
        if not self.enabled:
            return
        self._stale.set()
        while True:
            await self._stale.wait()
            self._stale.clear()
            if not await self._refresh():
                await asyncio.sleep(RETRY_S)
                self._stale.set()

    async def _refresh(self) -> bool:
        """Bring the index up to date; False when OPA could not confirm the wanted revision (try again)."""
        want = self._revision()
        try:
            endpoint = self._endpoint()
        except OpaError:
            return False
        current = self._current
        try:
            if current is not None and current.revision == want and current.endpoint is endpoint:
                if want not in await self._client.revisions():  # a recheck: has OPA still our revision?
                    self._current = None
                    return False
                self._current = dataclasses.replace(current, checked=time.monotonic())
                return True
            lookups, revisions = await self._client.candidate_index()
        except OpaError as e:
            log.debug("candidate index not fetched", extra={"error": str(e)})
            return False
        if not want or want not in revisions or self._revision() != want or self._endpoint() is not endpoint:
            return False  # OPA is not (or no longer) on the wanted revision: decisions go to OPA meanwhile
        found = CandidateIndex.parse(want, lookups)
        self._current = _Current(want, ",".join(revisions), found, endpoint, time.monotonic())
        log.info(
            "candidate index loaded" if found else "candidate index not usable: every alert goes to OPA",
            extra={"revision": want, "rule_keys": len(found.rule_keys) if found else 0},
        )
        return True
