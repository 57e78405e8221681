package talon.lib.priority_test

import data.talon.lib.priority

test_rank_is_case_insensitive_and_unknown_is_zero if {
	priority.rank("Warning") == 4
	priority.rank("EMERGENCY") == 8
	priority.rank("debug") == 1
	priority.rank("Info") == 0
	priority.rank("") == 0
}

test_no_filter_accepts_everything if {
	priority.satisfies(0, "", 0)
	priority.satisfies(5, ">=", 0)
}

test_operators if {
	priority.satisfies(4, "", 4)
	priority.satisfies(4, "=", 4)
	not priority.satisfies(5, "=", 4)
	priority.satisfies(5, ">", 4)
	not priority.satisfies(4, ">", 4)
	priority.satisfies(4, ">=", 4)
	not priority.satisfies(3, ">=", 4)
	priority.satisfies(3, "<", 4)
	not priority.satisfies(4, "<", 4)
	priority.satisfies(4, "<=", 4)
	not priority.satisfies(5, "<=", 4)
}

test_unknown_alert_priority_satisfies_only_less_than if {
	priority.satisfies(0, "<", 4)
	priority.satisfies(0, "<=", 4)
	not priority.satisfies(0, ">=", 1)
	not priority.satisfies(0, "=", 4)
}

test_satisfies_text if {
	priority.satisfies_text(6, ">=Warning")
	not priority.satisfies_text(3, ">=warning")
	priority.satisfies_text(3, ">=")
	priority.satisfies_text(4, "Warning")
	priority.satisfies_text(2, "<Notice")
}
