package talon.plan_test

import data.talon.plan

_label := {"action": "label", "actionner": "kubernetes:label", "continue": true}

_kill := {"action": "kill", "actionner": "kubernetes:terminate", "continue": false}

_rules := {
	"first": {"match": true, "name": "First", "position": 1, "continue": true, "actions": [_label]},
	"stop": {"match": true, "name": "Stop", "position": 2, "continue": false, "actions": [_kill]},
	"later": {"match": true, "name": "Later", "position": 3, "continue": true, "actions": [_label]},
	"other": {"match": false, "name": "Other", "position": 0, "actions": [_label]},
}

_index := {"by_rule": {"R": ["later", "stop", "first", "other"]}, "by_tag": {}, "always": []}

test_plan_is_exactly_matched_rules_and_steps if {
	result := plan with input as {"rule": "R"}
		with data.talon.rules as _rules
		with data.talon.index as _index
	object.keys(result) == {"matched_rules", "steps"}
	result.matched_rules == ["First", "Stop", "Later"]
	[s.rule | some s in result.steps] == ["First", "Stop"]
}

test_steps_have_the_full_shape if {
	steps := plan.steps with input as {"rule": "R"}
		with data.talon.rules as _rules
		with data.talon.index as _index
	steps[0] == {
		"rule": "First", "action": "label", "actionner": "kubernetes:label", "parameters": {},
		"continue": true, "ignore_errors": false, "dry_run": false, "output": null, "notifiers": [],
	}
}

test_no_match_gives_empty_lists if {
	result := plan with input as {"rule": "nothing"}
		with data.talon.rules as _rules
		with data.talon.index as _index
	result == {"matched_rules": [], "steps": []}
}

test_no_rules_at_all_gives_empty_lists if {
	plan == {"matched_rules": [], "steps": []} with input as {"rule": "R"}
		with data.talon.rules as {}
		with data.talon.index as {}
}
