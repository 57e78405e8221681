# METADATA
# title: Blast-radius caps and protected namespaces
# description: |
#   Marks the plan's steps that must not run: `"held": "<reason>"` (docs/caps.md).
#   Config: data.talon.caps (the engine's `caps:` section):
#   {"limits": {"<actionner>": {"per_namespace": N, "window_seconds": 60|600|3600}},
#    "protected_namespaces": ["kube-system"]}.
#   Counts: input.counters["<actionner>"]["<namespace>"]["<window>"], the steps that ran with success.
package talon.lib.caps

# the alert's namespace, in the engine's accessor order ("" when absent)
namespace := ns if {
	ns := input.output_fields_str["k8s.ns.name"]
	ns != ""
} else := ns if {
	ns := input.output_fields_str["ka.target.namespace"]
	ns != ""
} else := ""

# how many steps of this actionner ran in the alert's namespace in the last `window` seconds
recent(actionner, window) := object.get(input, ["counters", actionner, namespace, format_int(window, 10)], 0)

# why a step is held; undefined when it may run
reason(step) := sprintf("namespace %q is protected", [namespace]) if {
	namespace != ""
	namespace in data.talon.caps.protected_namespaces
} else := msg if {
	limit := data.talon.caps.limits[step.actionner]
	n := recent(step.actionner, limit.window_seconds)
	n >= limit.per_namespace
	msg := sprintf(
		"cap reached: %d %s in namespace %q in the last %ds (limit %d)",
		[n, step.actionner, namespace, limit.window_seconds, limit.per_namespace],
	)
}

# the step, with `held` when it must not run
mark(step) := object.union(step, {"held": r}) if {
	r := reason(step)
} else := step

# every step marked
marked(steps) := [mark(s) | some s in steps]
