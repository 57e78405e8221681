# METADATA
# title: Steps that wait for an operator's approval
# description: |
#   Marks the plan's steps that must wait for an approval: `"approval": {"window_seconds": N}`
#   (docs/approvals.md). Config: data.talon.approvals (the engine's `approvals:` section):
#   {"require": [{"actionners": [...], "actions": [...], "rules": [...], "namespaces": [...], "window_seconds": N}]}.
#   A requirement applies when each of its non-empty lists names the step's actionner, its action, its Talon
#   rule and the alert's namespace; the first one that applies gives the window. A held step is not marked
#   (it never runs), nor a dry-run one (it would change nothing).
package talon.lib.approvals

import data.talon.lib.caps

# the requirement's list `key` is empty or names `value`
_names(req, key, _) if count(object.get(req, key, [])) == 0

_names(req, key, value) if value in req[key]

applies(req, step) if {
	_names(req, "actionners", step.actionner)
	_names(req, "actions", step.action)
	_names(req, "rules", step.rule)
	_names(req, "namespaces", caps.namespace)
}

# the approval window of a step, from the first requirement that applies; undefined when none does
window(step) := ws[0] if {
	ws := [r.window_seconds | some r in data.talon.approvals.require; applies(r, step)]
	count(ws) > 0
}

# the step, with `approval` when it must wait for one
mark(step) := object.union(step, {"approval": {"window_seconds": w}}) if {
	not step.held
	not step.dry_run
	w := window(step)
} else := step

# every step marked
marked(steps) := steps if {
	not data.talon.approvals.require
} else := [mark(s) | some s in steps]
