# METADATA
# title: Tag groups (OR of AND-groups)
# description: |
#   A group is a set (or array) of tags that must all be on the alert; a list of groups matches when
#   any group does. An empty list of groups matches everything. Tags are compared exactly.
package talon.lib.tags

# every tag of the group is in tags_set (an object tag -> true, as input.tags_set)
group_matches(tags_set, group) if every tag in group {
	tags_set[tag]
}

any_group(_, groups) if count(groups) == 0

any_group(tags_set, groups) if {
	some group in groups
	group_matches(tags_set, group)
}
