# METADATA
# title: Undo TTLs
# description: |
#   Gives a step `"undo_after_seconds": N` when its change is to be undone N seconds after it ran
#   (docs/undo.md); only reversible actionners' steps are undone, the engine ignores it on the others.
#   Config: data.talon.undo (the engine's `undo:` section):
#   {"ttl_seconds": {"actionners": {"<actionner>": N}, "rules": {"<rule>": N}}}; the rule's TTL wins.
#   A step that already carries `undo_after_seconds` (set by a native rule's action) keeps it.
package talon.lib.undo

# seconds after which the step's change is undone; undefined: kept until `talon-opa undo`
ttl(step) := t if {
	t := step.undo_after_seconds
} else := t if {
	t := data.talon.undo.ttl_seconds.rules[step.rule]
} else := t if {
	t := data.talon.undo.ttl_seconds.actionners[step.actionner]
}

# the step, with `undo_after_seconds` when it has a TTL
mark(step) := object.union(step, {"undo_after_seconds": t}) if {
	t := ttl(step)
} else := step

# every step marked
marked(steps) := steps if {
	not data.talon.undo
} else := [mark(s) | some s in steps]
