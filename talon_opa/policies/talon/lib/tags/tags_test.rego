package talon.lib.tags_test

import data.talon.lib.tags

_alert_tags := {"T1059": true, "container": true, "shell": true}

test_group_needs_every_tag if {
	tags.group_matches(_alert_tags, {"T1059", "container"})
	not tags.group_matches(_alert_tags, {"T1059", "network"})
}

test_groups_are_or_ed if {
	tags.any_group(_alert_tags, [{"network"}, {"shell", "container"}])
	not tags.any_group(_alert_tags, [{"network"}, {"k8s"}])
}

test_no_groups_match_everything if {
	tags.any_group({}, [])
}

test_duplicates_count_once if {
	tags.group_matches({"a": true}, ["a", "a"])
}
