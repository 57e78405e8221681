# METADATA
# title: Blast-radius caps, protected namespaces and labels, the last ready replica
# description: |
#   Marks the plan's steps that must not run: `"held": "<reason>"` (docs/caps.md).
#   Config: data.talon.caps (the engine's `caps:` section):
#   {"limits": {"<actionner>": {"per_namespace": N, "window_seconds": 60|600|3600}},
#    "protected_namespaces": ["kube-system"], "protected_labels": {"<key>": "<value>" | "*"},
#    "keep_last_replica": ["<actionner>"]}.
#   Counts: input.counters["<actionner>"]["<namespace>"]["<window>"], the steps that ran with success.
#   The pod: input.pod (the engine's lookup, docs/rego.md §1) and Falco's k8s.pod.label(s) fields.
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

# "k:v" -> ["k", "v"]; a label without ":" has the empty value
_pair(item) := [k, v] if {
	i := indexof(item, ":")
	i > 0
	k := trim_space(substring(item, 0, i))
	v := trim_space(substring(item, i + 1, -1))
} else := [trim_space(item), ""]

# the items of Falco's k8s.pod.labels: a JSON array of "k:v", or its text form "(k:v,k2:v2)" / "[k:v, k2:v2]"
_label_items(value) := [x | some x in value; is_string(x)] if is_array(value)

_label_items(value) := [x | some x in split(trim(value, "()[] "), ","); trim_space(x) != ""] if is_string(value)

# k8s.pod.labels as Falco sent it: an array (in output_fields; the lean input carries output_fields only when
# a value is not a string) or its text form (output_fields_str)
_pod_labels_field := v if {
	v := input.output_fields["k8s.pod.labels"]
} else := object.get(input.output_fields_str, "k8s.pod.labels", [])

# the labels Falco put in the alert: k8s.pod.labels, k8s.pod.label[<key>] and k8s.pod.label.<key>
falco_labels := object.union(
	{p[0]: p[1] | some item in _label_items(_pod_labels_field); p := _pair(item)},
	{k: v |
		some field, v in input.output_fields_str
		k := _label_key(field)
	},
)

_label_key(field) := trim_suffix(substring(field, 14, -1), "]") if startswith(field, "k8s.pod.label[")

_label_key(field) := substring(field, 14, -1) if {
	startswith(field, "k8s.pod.label.")
	field != "k8s.pod.label."
}

# the pod's labels: the API server's (input.pod.labels, when the engine looked the pod up) win over Falco's
labels := object.union(falco_labels, object.get(input, ["pod", "labels"], {}))

# a protected label the pod carries, as "key=value" (the config's value, or "*" for any value)
protected_labels contains sprintf("%s=%s", [k, v]) if {
	some k, want in data.talon.caps.protected_labels
	v := labels[k]
	want in {"*", v}
}

# why the pod's labels cannot be checked: the engine's lookup failed
_lookup_failed := input.pod.error if count(object.get(data.talon.caps, "protected_labels", {})) > 0

# why the step would take down the last ready replica of the pod's workload; undefined otherwise
_last_replica(step) := msg if {
	step.actionner in data.talon.caps.keep_last_replica
	msg := sprintf("cannot tell whether the pod is the last ready replica: %s", [input.pod.error])
} else := msg if {
	step.actionner in data.talon.caps.keep_last_replica
	input.pod.ready == true
	w := input.pod.workload
	w.ready_replicas <= 1
	msg := sprintf("the pod is the last ready replica of %s %q (%d ready)", [w.kind, w.name, w.ready_replicas])
}

# why a step is held; undefined when it may run
reason(step) := sprintf("namespace %q is protected", [namespace]) if {
	namespace != ""
	namespace in data.talon.caps.protected_namespaces
} else := sprintf("label %s is protected", [min(protected_labels)]) if {
	count(protected_labels) > 0
} else := sprintf("cannot check the pod's protected labels: %s", [_lookup_failed]) if {
	_lookup_failed
} else := msg if {
	msg := _last_replica(step)
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

# every step marked (without data.talon.caps nothing can hold a step: the steps as they are)
marked(steps) := steps if {
	not data.talon.caps
} else := [mark(s) | some s in steps]
