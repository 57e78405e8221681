# METADATA
# title: Order matched rules and build the plan's steps
# description: |
#   Pure functions over matched-rule entries: {"key": [position, kind, package], "name",
#   "continue", "dry_run", "notifiers", "actions"}, kind 0 translated, 1 native.
#   Sets have no order: the order comes from `key` (position first), compared by OPA's term order.
package talon.lib.order

# a native rule without a position goes after every translated rule
last_position := 1000000000

# entries sorted by their key
sorted(entries) := [entry | some pair in sort([[e.key, e] | some e in entries]); entry := pair[1]]

# the display names of the sorted entries
names(ordered) := [e.name | some e in ordered]

# the sorted entries up to and including the first whose `continue` is false
included(ordered) := array.slice(ordered, 0, _stop(ordered) + 1)

_stop(ordered) := min(stops) if {
	stops := [i | some i, e in ordered; e.continue == false]
	count(stops) > 0
}

else := count(ordered)

# the steps of the included entries, in order (entries carry complete steps)
steps(ordered) := [action | some e in included(ordered); some action in e.actions]

# METADATA
# description: a step in the plan's shape; keys the action gives win over the rule's defaults
step(entry, action) := object.union(
	{
		"rule": entry.name,
		"action": object.get(action, "actionner", ""),
		"actionner": "",
		"parameters": {},
		"continue": true,
		"ignore_errors": false,
		"dry_run": entry.dry_run,
		"output": null,
		"notifiers": entry.notifiers,
	},
	action,
)
