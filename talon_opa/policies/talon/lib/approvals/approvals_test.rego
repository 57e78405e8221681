package talon.lib.approvals_test

import data.talon.lib.approvals

_config := {"require": [
	{"actionners": ["kubernetes:terminate"], "rules": [], "namespaces": ["payments"], "window_seconds": 300},
	{"actionners": [], "rules": ["Isolate"], "namespaces": [], "window_seconds": 60},
]}

_input(ns) := {"output_fields_str": {"k8s.ns.name": ns}}

_terminate := {"rule": "r", "action": "t", "actionner": "kubernetes:terminate"}

test_a_required_step_is_marked_with_its_window if {
	m := approvals.mark(_terminate) with input as _input("payments") with data.talon.approvals as _config
	m.approval == {"window_seconds": 300}
}

test_another_namespace_needs_no_approval if {
	approvals.mark(_terminate) == _terminate with input as _input("shop") with data.talon.approvals as _config
}

test_a_rule_requirement_applies_to_every_actionner if {
	step := {"rule": "Isolate", "action": "l", "actionner": "kubernetes:label"}
	m := approvals.mark(step) with input as _input("shop") with data.talon.approvals as _config
	m.approval.window_seconds == 60
}

test_the_first_requirement_that_applies_gives_the_window if {
	step := {"rule": "Isolate", "action": "t", "actionner": "kubernetes:terminate"}
	m := approvals.mark(step) with input as _input("payments") with data.talon.approvals as _config
	m.approval.window_seconds == 300
}

test_a_held_step_is_not_marked if {
	step := object.union(_terminate, {"held": "namespace \"payments\" is protected"})
	approvals.mark(step) == step with input as _input("payments") with data.talon.approvals as _config
}

test_an_action_requirement_names_one_step if {
	config := {"require": [{"actions": ["t"], "window_seconds": 5}]}
	m := approvals.mark(_terminate) with input as _input("shop") with data.talon.approvals as config
	m.approval.window_seconds == 5
	other := {"rule": "r", "action": "l", "actionner": "kubernetes:terminate"}
	approvals.mark(other) == other with input as _input("shop") with data.talon.approvals as config
}

test_a_dry_run_step_is_not_marked if {
	step := object.union(_terminate, {"dry_run": true})
	approvals.mark(step) == step with input as _input("payments") with data.talon.approvals as _config
}

test_no_config_no_approval if {
	approvals.mark(_terminate) == _terminate with input as _input("payments")
}

test_marked_keeps_order if {
	steps := [{"rule": "r", "action": "l", "actionner": "kubernetes:label"}, _terminate]
	out := approvals.marked(steps) with input as _input("payments") with data.talon.approvals as _config
	[s.action | some s in out; s.approval] == ["t"]
}

test_a_native_rules_own_approval_is_kept if {
	step := object.union(_terminate, {"approval": {"window_seconds": 42}})
	approvals.mark(step) == step with input as _input("shop") with data.talon.approvals as _config
}

test_marked_with_a_config_and_without if {
	m := approvals.marked([_terminate]) with input as _input("payments") with data.talon.approvals as _config
	m[0].approval == {"window_seconds": 300}
	approvals.marked([_terminate]) == [_terminate] with input as _input("payments")
}
