"""Falco's priorities and Talon's rank of each (internal/rules/priority.go): the one table.

The alert's rank (the OPA input's `priority_rank`) and a rule's priority filter both come from here.
Names compare case-insensitively; any other name ranks 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

NAMES = ("Debug", "Informational", "Notice", "Warning", "Error", "Critical", "Alert", "Emergency")  # rank 1 to 8
RANKS: Mapping[str, int] = MappingProxyType({name.lower(): i for i, name in enumerate(NAMES, start=1)})


def rank(priority: str) -> int:
    """The rank of a priority name (case-insensitive), 0 when it is not one of `NAMES`."""
    return RANKS.get(priority.lower(), 0)
