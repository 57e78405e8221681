package talon.lib.undo_test

import data.talon.lib.undo

_undo := {"ttl_seconds": {
	"actionners": {"kubernetes:networkpolicy": 1800},
	"rules": {"Quarantine briefly": 60},
}}

_policy := {"rule": "Isolate", "action": "a", "actionner": "kubernetes:networkpolicy"}

test_the_actionners_ttl if {
	undo.mark(_policy).undo_after_seconds == 1800 with data.talon.undo as _undo
}

test_the_rules_ttl_wins if {
	step := object.union(_policy, {"rule": "Quarantine briefly"})
	undo.mark(step).undo_after_seconds == 60 with data.talon.undo as _undo
}

test_the_steps_own_ttl_wins if {
	step := object.union(_policy, {"undo_after_seconds": 5})
	undo.mark(step).undo_after_seconds == 5 with data.talon.undo as _undo
}

test_no_ttl_no_key if {
	step := {"rule": "r", "action": "l", "actionner": "kubernetes:label"}
	undo.mark(step) == step with data.talon.undo as _undo
}

test_no_config_no_key if {
	undo.mark(_policy) == _policy
}

test_marked_with_a_config_and_without if {
	undo.marked([_policy])[0].undo_after_seconds == 1800 with data.talon.undo as _undo
	own := object.union(_policy, {"undo_after_seconds": 5})
	undo.marked([_policy, own]) == [_policy, own]
}
