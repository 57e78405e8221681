# METADATA
# title: Output field conditions (OR of AND-groups)
# description: |
#   A condition is {"field": "k8s.ns.name", "op": "=" | "!=", "value": "payments"}, compared with
#   the field's string form (input.output_fields_str). "!=" holds when the field is missing, as in
#   Falco Talon. An empty list of groups matches everything.
package talon.lib.fields

holds(fields_str, condition) if {
	condition.op == "="
	fields_str[condition.field] == condition.value
}

holds(fields_str, condition) if {
	condition.op == "!="
	not fields_str[condition.field] == condition.value
}

group_matches(fields_str, group) if every condition in group {
	holds(fields_str, condition)
}

any_group(_, groups) if count(groups) == 0

any_group(fields_str, groups) if {
	some group in groups
	group_matches(fields_str, group)
}
