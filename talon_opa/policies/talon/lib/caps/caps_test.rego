package talon.lib.caps_test

import data.talon.lib.caps

_caps := {
	"limits": {"kubernetes:terminate": {"per_namespace": 3, "window_seconds": 600}},
	"protected_namespaces": ["kube-system"],
}

_input(ns, n) := {
	"output_fields_str": {"k8s.ns.name": ns},
	"counters": {"kubernetes:terminate": {ns: {"60": 1, "600": n, "3600": n}}},
}

_terminate := {"rule": "r", "action": "t", "actionner": "kubernetes:terminate"}

test_under_the_cap_runs if {
	caps.mark(_terminate) == _terminate with input as _input("payments", 2) with data.talon.caps as _caps
}

test_the_cap_holds_the_step if {
	m := caps.mark(_terminate) with input as _input("payments", 3) with data.talon.caps as _caps
	m.held == "cap reached: 3 kubernetes:terminate in namespace \"payments\" in the last 600s (limit 3)"
}

test_other_actionners_are_not_capped if {
	step := {"rule": "r", "action": "l", "actionner": "kubernetes:label"}
	caps.mark(step) == step with input as _input("payments", 9) with data.talon.caps as _caps
}

test_no_counters_no_hold if {
	inp := {"output_fields_str": {"k8s.ns.name": "payments"}}
	caps.mark(_terminate) == _terminate with input as inp with data.talon.caps as _caps
}

test_no_config_no_hold if {
	caps.mark(_terminate) == _terminate with input as _input("payments", 9)
}

test_protected_namespace_holds_every_step if {
	step := {"rule": "r", "action": "l", "actionner": "kubernetes:label"}
	m := caps.mark(step) with input as _input("kube-system", 0) with data.talon.caps as _caps
	m.held == "namespace \"kube-system\" is protected"
}

test_audit_namespace_is_the_fallback if {
	inp := {"output_fields_str": {"ka.target.namespace": "kube-system"}}
	caps.namespace == "kube-system" with input as inp
}

test_no_namespace_is_empty if {
	caps.namespace == "" with input as {"output_fields_str": {}}
}

test_marked_keeps_order if {
	steps := [_terminate, {"rule": "r", "action": "l", "actionner": "kubernetes:label"}]
	out := caps.marked(steps) with input as _input("payments", 5) with data.talon.caps as _caps
	[s.action | some s in out; s.held] == ["t"]
}
