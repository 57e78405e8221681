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

_label_caps := {"protected_labels": {"talon-opa.io/protected": "true", "tier": "*"}}

_labelled(fields, pod) := {"output_fields": fields, "output_fields_str": fields, "pod": pod}

test_a_protected_label_from_the_api_server_holds_every_step if {
	step := {"rule": "r", "action": "l", "actionner": "kubernetes:label"}
	inp := _labelled({"k8s.ns.name": "payments"}, {"labels": {"talon-opa.io/protected": "true", "app": "db"}})
	m := caps.mark(step) with input as inp with data.talon.caps as _label_caps
	m.held == "label talon-opa.io/protected=true is protected"
}

test_another_value_of_a_protected_key_runs if {
	inp := _labelled({}, {"labels": {"talon-opa.io/protected": "false"}})
	caps.mark(_terminate) == _terminate with input as inp with data.talon.caps as _label_caps
}

test_a_star_protects_any_value if {
	inp := _labelled({}, {"labels": {"tier": "gold"}})
	m := caps.mark(_terminate) with input as inp with data.talon.caps as _label_caps
	m.held == "label tier=gold is protected"
}

test_falco_label_fields_are_read if {
	caps.labels == {"a": "1", "b": "", "tier": "x", "talon-opa.io/protected": "true"} with input as _labelled(
		{"k8s.pod.labels": ["a:1", "b"], "k8s.pod.label[tier]": "x", "k8s.pod.label.talon-opa.io/protected": "true"},
		null,
	)
}

test_falco_labels_text_form if {
	caps.falco_labels == {"a": "1", "b": "x:y"} with input as _labelled({"k8s.pod.labels": "(a:1, b:x:y)"}, null)
}

test_the_api_server_labels_win_over_falcos if {
	inp := _labelled({"k8s.pod.label[tier]": "gold"}, {"labels": {"app": "web"}})
	caps.labels == {"tier": "gold", "app": "web"} with input as inp
	inp2 := _labelled({"k8s.pod.label[app]": "old"}, {"labels": {"app": "web"}})
	caps.labels == {"app": "web"} with input as inp2
}

test_a_failed_lookup_holds_when_labels_are_protected if {
	inp := _labelled({}, {"error": "GET pod: 403 forbidden"})
	m := caps.mark(_terminate) with input as inp with data.talon.caps as _label_caps
	m.held == "cannot check the pod's protected labels: GET pod: 403 forbidden"
	caps.mark(_terminate) == _terminate with input as inp with data.talon.caps as _caps
}

_replica_caps := {"keep_last_replica": ["kubernetes:terminate"]}

_replica(ready, n) := _labelled({}, {"labels": {}, "ready": ready, "workload": {
	"kind": "ReplicaSet",
	"name": "web-1",
	"ready_replicas": n,
}})

test_the_last_ready_replica_is_kept if {
	m := caps.mark(_terminate) with input as _replica(true, 1) with data.talon.caps as _replica_caps
	m.held == "the pod is the last ready replica of ReplicaSet \"web-1\" (1 ready)"
}

test_one_of_two_ready_replicas_runs if {
	caps.mark(_terminate) == _terminate with input as _replica(true, 2) with data.talon.caps as _replica_caps
}

test_a_pod_that_is_not_ready_runs if {
	caps.mark(_terminate) == _terminate with input as _replica(false, 1) with data.talon.caps as _replica_caps
}

test_keep_last_replica_names_its_actionners if {
	step := {"rule": "r", "action": "l", "actionner": "kubernetes:label"}
	caps.mark(step) == step with input as _replica(true, 1) with data.talon.caps as _replica_caps
}

test_a_standalone_pod_has_no_workload if {
	inp := _labelled({}, {"labels": {}, "ready": true})
	caps.mark(_terminate) == _terminate with input as inp with data.talon.caps as _replica_caps
}

test_a_failed_lookup_holds_a_kept_actionner if {
	inp := _labelled({}, {"error": "timeout"})
	m := caps.mark(_terminate) with input as inp with data.talon.caps as _replica_caps
	m.held == "cannot tell whether the pod is the last ready replica: timeout"
}

test_marked_holds_with_a_config_and_leaves_the_steps_without if {
	held := caps.marked([_terminate]) with input as _input("kube-system", 0) with data.talon.caps as _caps
	held[0].held == "namespace \"kube-system\" is protected"
	caps.marked([_terminate]) == [_terminate] with input as _input("kube-system", 0)
}
