package talon.lib.matching_test

import data.talon.lib.matching

_rule(position) := {"match": true, "position": position, "actions": []}

_rules := {
	"by_rule": _rule(2),
	"by_tag": _rule(1),
	"always": _rule(3),
	"native": {"match": true, "actions": [{"action": "a", "actionner": "x:y"}]},
	"native_first": {"match": true, "position": 0, "name": "Native first", "continue": false},
	"unlisted": _rule(0),
}

_index := {
	"by_rule": {"R": ["by_rule"]},
	"by_tag": {"T": ["by_tag"], "U": ["never"]},
	"always": ["always"],
}

_native := {"native": true, "native_first": true}

test_candidates_come_from_the_index_and_the_native_registry if {
	names := matching.candidates with input as {"rule": "R", "tags_set": {"T": true}}
		with data.talon.index as _index
		with data.talon.native as _native
	names == {"by_rule", "by_tag", "always", "native", "native_first"}
}

test_unlisted_packages_are_never_evaluated if {
	names := [e.name | some e in matching.ordered] with input as {"rule": "R", "tags_set": {"T": true}}
		with data.talon.rules as _rules
		with data.talon.index as _index
		with data.talon.native as _native
	names == ["Native first", "by_tag", "by_rule", "always", "native"]
}

test_native_defaults if {
	entries := matching.matches with input as {"rule": "none"}
		with data.talon.rules as _rules
		with data.talon.index as {}
		with data.talon.native as {"native": true}
	entries == {{
		"key": [1000000000, 1, "native"], "name": "native", "continue": true, "dry_run": false,
		"notifiers": [], "actions": [{
			"rule": "native", "action": "a", "actionner": "x:y", "parameters": {}, "continue": true,
			"ignore_errors": false, "dry_run": false, "output": null, "notifiers": [],
		}],
	}}
}

test_translated_entries_come_from_the_index if {
	translated := {"key": [1, 0, "t"], "name": "T", "continue": false, "dry_run": false, "notifiers": [], "actions": []}
	entries := matching.matches with input as {"rule": "R"}
		with data.talon.rules as {"t": {"match": true}}
		with data.talon.index as {"by_rule": {"R": ["t"]}, "rules": {"t": translated}}
	entries == {translated}
}

test_native_sorts_after_translated_at_the_same_position if {
	rules := {"t": _rule(2), "n": {"match": true, "position": 2, "dry_run": true, "notifiers": ["slack"]}}
	entries := matching.ordered with input as {"rule": "R"}
		with data.talon.rules as rules
		with data.talon.index as {"by_rule": {"R": ["t"]}}
		with data.talon.native as {"n": true}
	[e.key | some e in entries] == [[2, 0, "t"], [2, 1, "n"]]
	entries[1].dry_run == true
	entries[1].notifiers == ["slack"]
}

test_rules_as_data_entries_are_rebuilt_from_the_step_table if {
	index := {
		"by_rule": {"R": ["t", "u"]},
		"rules": {
			"t": {"name": "T", "position": 2, "match": {"priority": [">=", 4]}, "steps": [1, 0], "notifiers": ["slack"]},
			"u": {"name": "U", "position": 1, "match": {"output_fields": [[["ns", "!=", "a"]]]}, "steps": [0], "continue": false, "dry_run": true},
		},
		"steps": [{"action": "a", "actionner": "x:y"}, {"action": "b", "actionner": "x:z", "parameters": {"n": 1}, "continue": false}],
	}
	entries := matching.ordered with input as {"rule": "R", "priority_rank": 4, "output_fields_str": {"ns": "b"}}
		with data.talon.index as index
	entries == [
		{"key": [1, 0, "u"], "name": "U", "continue": false, "dry_run": true, "notifiers": [], "actions": [{
			"rule": "U", "action": "a", "actionner": "x:y", "parameters": {}, "continue": true,
			"ignore_errors": false, "dry_run": true, "output": null, "notifiers": [],
		}]},
		{"key": [2, 0, "t"], "name": "T", "continue": true, "dry_run": false, "notifiers": ["slack"], "actions": [
			{
				"rule": "T", "action": "b", "actionner": "x:z", "parameters": {"n": 1}, "continue": false,
				"ignore_errors": false, "dry_run": false, "output": null, "notifiers": ["slack"],
			},
			{
				"rule": "T", "action": "a", "actionner": "x:y", "parameters": {}, "continue": true,
				"ignore_errors": false, "dry_run": false, "output": null, "notifiers": ["slack"],
			},
		]},
	]
	none := matching.matches with input as {"rule": "R", "priority_rank": 3, "output_fields_str": {"ns": "a"}}
		with data.talon.index as index
	none == set()
}
