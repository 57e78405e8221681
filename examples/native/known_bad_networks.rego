# METADATA
# title: Isolate pods talking to known-bad networks
# description: |
#   A native rule: something Talon's YAML cannot say. The remote IP (fd.rip) is checked against
#   CIDR ranges with net.cidr_contains, and namespaces on an allow-list are left alone.
package talon.rules.known_bad_networks

import data.talon.lib.priority

# shown in the plan's matched_rules and in each step's `rule`
name := "Isolate pods talking to known-bad networks"

# between the first (position 1) and the second (position 2) translated rule
position := 1.5

# a later matching rule still runs
continue := true

bad_networks := {"198.51.100.0/24", "203.0.113.0/24"}

allowed_namespaces := {"kube-system", "falco"}

match if {
	priority.satisfies(input.priority_rank, ">=", priority.rank("Warning"))
	some cidr in bad_networks
	net.cidr_contains(cidr, input.output_fields_str["fd.rip"])
	not input.output_fields_str["k8s.ns.name"] in allowed_namespaces
}

# the plan's step shape; omitted keys take their defaults (parameters {}, continue true,
# ignore_errors false, dry_run false, output null, notifiers [], rule = name)
actions := [{
	"action": "Isolate the pod",
	"actionner": "kubernetes:networkpolicy",
	"parameters": {"allow_cidr": ["10.0.0.0/8"], "allow_namespaces": null},
	"notifiers": ["slack"],
}]
