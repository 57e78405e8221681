# METADATA
# title: Which rules match the alert
# description: |
#   Candidates come from the generated index (data.talon.index) in O(1) lookups, plus the
#   registered native rules (data.talon.native), so decision time does not grow with the number of
#   rules; each candidate's `match` is then evaluated through its package, never by enumerating
#   data.talon.rules (that would evaluate every rule of every package), or, for a rules set translated
#   to data (beyond 1,000 rules, docs/rego.md), from its match block in the index.
package talon.lib.matching

import data.talon.lib.order

# the matched rules, in plan order
ordered := order.sorted(matches)

# METADATA
# description: one entry per matched rule package, in the shape talon.lib.order expects
matches contains entry if {
	some name in candidates
	_matches(name)
	entry := _entry(name)
}

_matches(name) if data.talon.rules[name].match

_matches(name) if _accepts(data.talon.index.rules[name].match)

# METADATA
# description: |
#   a translated rule's match block as data: every criterion present holds (rules: one of them;
#   priority: the comparison [op, rank]; tags: all tags of one group; output_fields: every condition
#   [field, op, value] of one group, "!=" holding on a missing field; source: equal), as the rule's
#   module would decide
_accepts(m) if {
	_rules_hold(m)
	_priority_holds(m)
	_tags_hold(m)
	_fields_hold(m)
	_source_holds(m)
}

_rules_hold(m) if not m.rules

_rules_hold(m) if input.rule in m.rules

_priority_holds(m) if not m.priority

_priority_holds(m) if _compare(m.priority[0], input.priority_rank, m.priority[1])

_compare("==", a, b) if a == b

_compare(">", a, b) if a > b

_compare(">=", a, b) if a >= b

_compare("<", a, b) if a < b

_compare("<=", a, b) if a <= b

_tags_hold(m) if not m.tags

_tags_hold(m) if {
	some group in m.tags
	every tag in group {
		input.tags_set[tag]
	}
}

_fields_hold(m) if not m.output_fields

_fields_hold(m) if {
	some group in m.output_fields
	every condition in group {
		_field_holds(condition)
	}
}

_field_holds([field, "=", value]) if input.output_fields_str[field] == value

_field_holds([field, "!=", value]) if not input.output_fields_str[field] == value

_source_holds(m) if not m.source

_source_holds(m) if input.source == m.source

# a translated rule's entry is precomputed by the generator (one lookup), or, for the rules as data,
# rebuilt from the rule's fields other than defaults and its steps in the table of distinct steps
# (docs/rego.md §3); a native one is built
_entry(name) := entry if {
	entry := data.talon.index.rules[name]
	entry.actions
} else := entry if {
	rule := data.talon.index.rules[name]
	dry_run := object.get(rule, "dry_run", false)
	notifiers := object.get(rule, "notifiers", [])

	# a step of the table has its own `action` and `actionner`; the rest as order.step gives it
	defaults := {
		"rule": rule.name, "parameters": {}, "continue": true, "ignore_errors": false,
		"dry_run": dry_run, "output": null, "notifiers": notifiers,
	}
	entry := {
		"key": [rule.position, 0, name],
		"name": rule.name,
		"continue": object.get(rule, "continue", true),
		"dry_run": dry_run,
		"notifiers": notifiers,
		"actions": [object.union(defaults, data.talon.index.steps[i]) | some i in rule.steps],
	}
} else := entry if {
	base := {
		"key": [_position(name), _kind(name), name],
		"name": _display_name(name),
		"continue": _continue(name),
		"dry_run": _dry_run(name),
		"notifiers": _notifiers(name),
	}
	entry := object.union(base, {"actions": [order.step(base, action) | some action in _actions(name)]})
}

candidates contains name if some name in data.talon.index.by_rule[input.rule]

candidates contains name if {
	some tag, _ in input.tags_set
	some name in data.talon.index.by_tag[tag]
}

candidates contains name if some name in data.talon.index.always

candidates contains name if some name, _ in data.talon.native

# a native rule sorts after a translated rule at the same position
_kind(name) := 1 if data.talon.native[name]

else := 0

_position(name) := value if value := data.talon.rules[name].position

else := order.last_position

_display_name(name) := value if value := data.talon.rules[name].name

else := name

_continue(name) := value if value := data.talon.rules[name].continue

else := true

_dry_run(name) := value if value := data.talon.rules[name].dry_run

else := false

_notifiers(name) := value if value := data.talon.rules[name].notifiers

else := []

_actions(name) := value if value := data.talon.rules[name].actions

else := []
