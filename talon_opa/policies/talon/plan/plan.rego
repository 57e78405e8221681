# METADATA
# title: The action plan of an alert
# description: |
#   THE entrypoint (POST /v1/data/talon/plan). Its value is exactly
#   {"matched_rules": [...], "steps": [...]} (DESIGN §3.2): every rule whose match accepts the
#   alert, in rules-file order, and the steps of the matched rules up to and including the first
#   one whose `continue` is false; a step the caps policy stops carries `held` (lib/caps), a step that
#   waits for an operator's approval carries `approval` (lib/approvals), a step with a TTL
#   `undo_after_seconds` (lib/undo). Only these two rules may live in this package.
# entrypoint: true
package talon.plan

import data.talon.lib.approvals
import data.talon.lib.caps
import data.talon.lib.matching
import data.talon.lib.order
import data.talon.lib.undo

matched_rules := order.names(matching.ordered)

steps := undo.marked(approvals.marked(caps.marked(order.steps(matching.ordered))))
