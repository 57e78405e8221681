# METADATA
# title: Falco priorities, ranked like Falco Talon
# description: |
#   Ranks 1 (Debug) to 8 (Emergency); any other name ranks 0. The input carries the alert's rank
#   as input.priority_rank.
package talon.lib.priority

ranks := {
	"debug": 1,
	"informational": 2,
	"notice": 3,
	"warning": 4,
	"error": 5,
	"critical": 6,
	"alert": 7,
	"emergency": 8,
}

# the rank of a priority name, case-insensitive; unknown names rank 0
rank(name) := object.get(ranks, lower(name), 0)

# METADATA
# description: |
#   Talon's comparison: a filter of rank 0 accepts everything; "" and "=" mean equal.
#   An alert of unknown priority (rank 0) satisfies every "<" and "<=" filter.
satisfies(_, _, wanted) if wanted == 0

satisfies(event_rank, op, wanted) if {
	wanted != 0
	_compare(event_rank, op, wanted)
}

# satisfies a filter written like Talon's `match.priority`, e.g. ">=Warning"
satisfies_text(event_rank, text) if {
	[_, op, name] := regex.find_all_string_submatch_n(`^([<>]?=?)(.*)$`, text, 1)[0]
	satisfies(event_rank, op, rank(name))
}

_compare(e, "", r) if e == r

_compare(e, "=", r) if e == r

_compare(e, ">", r) if e > r

_compare(e, ">=", r) if e >= r

_compare(e, "<", r) if e < r

_compare(e, "<=", r) if e <= r
