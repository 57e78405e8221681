package talon.lib.order_test

import data.talon.lib.order

_entry(key, cont, actions) := {
	"key": key, "name": key[2], "continue": cont, "dry_run": false, "notifiers": ["n"], "actions": actions,
}

test_sorted_orders_by_position_then_kind_then_name if {
	entries := {_entry([2, 0, "b"], true, []), _entry([1, 1, "a"], true, []), _entry([1, 0, "c"], true, [])}
	order.names(order.sorted(entries)) == ["c", "a", "b"]
}

test_included_stops_after_the_first_continue_false if {
	ordered := [_entry([1, 0, "a"], true, []), _entry([2, 0, "b"], false, []), _entry([3, 0, "c"], false, [])]
	order.names(order.included(ordered)) == ["a", "b"]
}

test_included_keeps_all_without_continue_false if {
	ordered := [_entry([1, 0, "a"], true, []), _entry([2, 0, "b"], true, [])]
	order.included(ordered) == ordered
}

test_steps_keep_rule_then_action_order if {
	ordered := [
		_entry([1, 0, "a"], true, [{"action": "a1"}, {"action": "a2"}]),
		_entry([2, 0, "b"], false, [{"action": "b1"}]),
		_entry([3, 0, "c"], true, [{"action": "c1"}]),
	]
	[s.action | some s in order.steps(ordered)] == ["a1", "a2", "b1"]
}

test_step_defaults_and_overrides if {
	entry := _entry([1, 0, "a"], true, [])
	order.step(entry, {"actionner": "kubernetes:label"}) == {
		"rule": "a", "action": "kubernetes:label", "actionner": "kubernetes:label", "parameters": {},
		"continue": true, "ignore_errors": false, "dry_run": false, "output": null, "notifiers": ["n"],
	}
	s := order.step(entry, {"action": "x", "actionner": "k:t", "continue": false, "notifiers": []})
	s.continue == false
	s.notifiers == []
}

test_empty if {
	order.steps([]) == []
	order.names([]) == []
}
