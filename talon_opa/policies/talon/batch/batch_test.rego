package talon.batch_test

import data.talon.batch
import data.talon.plan

_label := {"action": "label", "actionner": "kubernetes:label", "continue": true}

_kill := {"action": "kill", "actionner": "kubernetes:terminate", "continue": false}

_rules := {
	"first": {"match": true, "name": "First", "position": 1, "continue": true, "actions": [_label]},
	"stop": {"match": true, "name": "Stop", "position": 2, "continue": false, "actions": [_kill]},
	"tagged": {"match": true, "name": "Tagged", "position": 3, "continue": true, "actions": [_label]},
}

_index := {"by_rule": {"R": ["stop", "first"], "S": ["first"]}, "by_tag": {"t": ["tagged"]}, "always": []}

_alerts := [
	{"rule": "R"},
	{"rule": "nothing"},
	{"rule": "S", "tags_set": {"t": true}},
	{"rule": "R"},
]

test_each_plan_is_the_plan_of_its_alert_in_order if {
	plans := batch.plans with input as {"alerts": _alerts}
		with data.talon.rules as _rules
		with data.talon.index as _index
	count(plans) == count(_alerts)
	every i, alert in _alerts {
		plans[i] == plan with input as alert
			with data.talon.rules as _rules
			with data.talon.index as _index
	}
	[p.matched_rules | some p in plans] == [["First", "Stop"], [], ["First", "Tagged"], ["First", "Stop"]]
}

test_alerts_do_not_leak_into_each_other if {
	plans := batch.plans with input as {"alerts": [{"rule": "S", "tags_set": {"t": true}}, {"rule": "S"}]}
		with data.talon.rules as _rules
		with data.talon.index as _index
	[p.matched_rules | some p in plans] == [["First", "Tagged"], ["First"]]
}

test_no_alerts_gives_no_plans if {
	batch.plans == [] with input as {"alerts": []}
}
