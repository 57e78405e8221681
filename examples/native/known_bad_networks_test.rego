package talon.rules.known_bad_networks_test

import data.talon.rules.known_bad_networks as rule

_alert(ip, namespace) := {
	"rule": "Outbound Connection to C2 Servers",
	"priority_rank": 4,
	"output_fields_str": {"fd.rip": ip, "k8s.ns.name": namespace},
}

test_matches_a_remote_ip_in_a_bad_network if {
	rule.match with input as _alert("198.51.100.66", "payments")
	rule.match with input as _alert("203.0.113.1", "shop")
}

test_ignores_other_networks if {
	not rule.match with input as _alert("10.1.2.3", "payments")
}

test_ignores_allowed_namespaces if {
	not rule.match with input as _alert("198.51.100.66", "kube-system")
}

test_ignores_low_priorities if {
	not rule.match with input as object.union(_alert("198.51.100.66", "payments"), {"priority_rank": 3})
}

test_ignores_alerts_without_a_remote_ip if {
	not rule.match with input as {"priority_rank": 8, "output_fields_str": {}}
}

test_plan_places_it_among_translated_rules if {
	translated := {"key": [1, 0, "first"], "name": "first", "continue": true, "dry_run": false, "notifiers": [], "actions": []}
	plan := data.talon.plan with input as _alert("198.51.100.66", "payments")
		with data.talon.index as {"by_rule": {"Outbound Connection to C2 Servers": ["first"]}, "rules": {"first": translated}}
		with data.talon.rules.first.match as true
		with data.talon.native as {"known_bad_networks": true}
	plan.matched_rules == ["first", "Isolate pods talking to known-bad networks"]
	plan.steps == [{
		"rule": "Isolate pods talking to known-bad networks", "action": "Isolate the pod",
		"actionner": "kubernetes:networkpolicy", "parameters": {"allow_cidr": ["10.0.0.0/8"], "allow_namespaces": null},
		"continue": true, "ignore_errors": false, "dry_run": false, "output": null, "notifiers": ["slack"],
	}]
}
