# METADATA
# title: The action plans of a batch of alerts
# description: |
#   POST /v1/data/talon/batch/plans with {"input": {"alerts": [<alert>, ...]}}: one plan per alert,
#   in the order of the alerts, each exactly the value of data.talon.plan with that alert as the
#   input. The engine decides micro-batches with it (one request for the alerts waiting together);
#   data.talon.plan stays the single-alert contract (DESIGN §3.2).
# entrypoint: true
package talon.batch

plans := [p | some alert in input.alerts; p := data.talon.plan with input as alert]
