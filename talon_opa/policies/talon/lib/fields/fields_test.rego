package talon.lib.fields_test

import data.talon.lib.fields

_fields := {"k8s.ns.name": "payments", "proc.pid": "1234567"}

test_equal if {
	fields.holds(_fields, {"field": "k8s.ns.name", "op": "=", "value": "payments"})
	not fields.holds(_fields, {"field": "k8s.ns.name", "op": "=", "value": "vault"})
	fields.holds(_fields, {"field": "proc.pid", "op": "=", "value": "1234567"})
}

test_equal_fails_on_a_missing_field if {
	not fields.holds(_fields, {"field": "fd.rip", "op": "=", "value": ""})
}

test_not_equal_holds_on_a_missing_field if {
	fields.holds(_fields, {"field": "fd.rip", "op": "!=", "value": "1.2.3.4"})
	not fields.holds(_fields, {"field": "k8s.ns.name", "op": "!=", "value": "payments"})
}

test_groups if {
	system := [{"field": "k8s.ns.name", "op": "!=", "value": "kube-system"}]
	payments := [{"field": "k8s.ns.name", "op": "=", "value": "payments"}]
	vault := [{"field": "k8s.ns.name", "op": "=", "value": "vault"}]
	fields.group_matches(_fields, array.concat(system, payments))
	fields.any_group(_fields, [vault, payments])
	not fields.any_group(_fields, [vault])
	fields.any_group(_fields, [])
}
