{{/* Names and labels shared by every object of the chart. */}}
{{- define "talon-opa.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "talon-opa.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Cluster-scoped objects (ClusterRole, binding): one per release and namespace. */}}
{{- define "talon-opa.clusterName" -}}
{{- printf "%s-%s" .Release.Namespace (include "talon-opa.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "talon-opa.selectorLabels" -}}
app.kubernetes.io/name: {{ include "talon-opa.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "talon-opa.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "talon-opa.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "talon-opa.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "talon-opa.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "talon-opa.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "talon-opa.opaImage" -}}
{{- $img := .Values.opa.sidecar.image }}
{{- if $img.repository }}
{{- printf "%s:%s" $img.repository (required "opa.sidecar.image.tag is required with opa.sidecar.image.repository (e.g. 1.21.4-static: the OPA version of tools/versions.env)" $img.tag) }}
{{- else }}
{{- include "talon-opa.image" . }}
{{- end }}
{{- end }}

{{/* The Secret holding the intake token, and its key. */}}
{{- define "talon-opa.tokenSecret" -}}
{{- default (printf "%s-auth" (include "talon-opa.fullname" .)) .Values.auth.existingSecret }}
{{- end }}

{{- define "talon-opa.tokenKey" -}}
{{- if .Values.auth.existingSecret }}{{ .Values.auth.existingSecretKey }}{{ else }}token{{ end }}
{{- end }}

{{/* The Secret holding the operator API's token, and its key. */}}
{{- define "talon-opa.operatorSecret" -}}
{{- default (printf "%s-operator" (include "talon-opa.fullname" .)) .Values.operator.existingSecret }}
{{- end }}

{{- define "talon-opa.operatorKey" -}}
{{- if .Values.operator.existingSecret }}{{ .Values.operator.existingSecretKey }}{{ else }}token{{ end }}
{{- end }}

{{/* What the config keeps in state_dir that must outlive the pod, comma-separated ("" when nothing). */}}
{{- define "talon-opa.statefulFeatures" -}}
{{- $features := list }}
{{- $ttl := dig "ttl_seconds" dict (default dict .Values.config.undo) }}
{{- if or (dig "actionners" dict $ttl) (dig "rules" dict $ttl) }}{{ $features = append $features "undo TTLs" }}{{ end }}
{{- if dig "require" list (default dict .Values.config.approvals) }}{{ $features = append $features "approvals" }}{{ end }}
{{- $audit := dig "audit" "path" "" .Values.config }}
{{- if and $audit (hasPrefix (printf "%s/" (trimSuffix "/" .Values.stateDir)) $audit) }}{{ $features = append $features "the audit trail" }}{{ end }}
{{- join ", " $features }}
{{- end }}

{{/* "true" when state_dir is a PersistentVolumeClaim (persistence.enabled, or unset and state to keep). */}}
{{- define "talon-opa.persistent" -}}
{{- $p := .Values.persistence }}
{{- if kindIs "invalid" $p.enabled }}
{{- if or $p.existingClaim (include "talon-opa.statefulFeatures" .) }}true{{ end }}
{{- else if $p.enabled }}true{{ end }}
{{- end }}

{{- define "talon-opa.stateClaim" -}}
{{- default (printf "%s-state" (include "talon-opa.fullname" .)) .Values.persistence.existingClaim }}
{{- end }}

{{/* Whether the caps policy reads the alert's pod (caps.protected_labels or caps.keep_last_replica). */}}
{{- define "talon-opa.capsNeedPod" -}}
{{- $caps := default dict .Values.config.caps }}
{{- if or (dig "protected_labels" dict $caps) (dig "keep_last_replica" list $caps) }}true{{ end }}
{{- end }}

{{- define "talon-opa.rulesConfigMap" -}}
{{- default (printf "%s-rules" (include "talon-opa.fullname" .)) .Values.rules.existingConfigMap }}
{{- end }}

{{/* The rules files: name -> content (the chart's default rules when none are given). */}}
{{- define "talon-opa.rulesFiles" -}}
{{- if .Values.rules.files }}
{{- toYaml .Values.rules.files }}
{{- else }}
{{- dict "rules.yaml" (.Files.Get "rules/rules.yaml") | toYaml }}
{{- end }}
{{- end }}

{{/* HTTPS when the engine's intake has a certificate (config.tls.cert_file). */}}
{{- define "talon-opa.scheme" -}}
{{- if dig "tls" "cert_file" "" .Values.config }}HTTPS{{ else }}HTTP{{ end }}
{{- end }}

{{- define "talon-opa.validate" -}}
{{- $owned := dict
      "listen_address" "nothing (the chart listens on 0.0.0.0 in the pod; networkPolicy.ingress restricts who reaches it)"
      "listen_port" "service.port"
      "rules_files" "rules.files (or rules.existingConfigMap and rules.fileNames)"
      "kubeconfig" "nothing (the engine uses its ServiceAccount)" }}
{{- range $key, $instead := $owned }}
{{- if hasKey $.Values.config $key }}
{{- fail (printf "config.%s is set by the chart: use %s" $key $instead) }}
{{- end }}
{{- end }}
{{- range $key, $instead := dict "url" "opa.mode" "bundle_dir" "nothing (an emptyDir of the pod)" }}
{{- if hasKey (default dict $.Values.config.opa) $key }}
{{- fail (printf "config.opa.%s is set by the chart: use %s" $key $instead) }}
{{- end }}
{{- end }}
{{- if hasKey $.Values.config "state_dir" }}
{{- fail "config.state_dir is set by the chart: use stateDir (the mount path) and persistence.*" }}
{{- end }}
{{- range $key, $instead := dict "token" "auth.token or auth.existingSecret" "header" "auth.header" "operator_token" "operator.token or operator.existingSecret" }}
{{- if hasKey (default dict $.Values.config.auth) $key }}
{{- fail (printf "config.auth.%s is set by the chart: use %s" $key $instead) }}
{{- end }}
{{- end }}
{{- if regexMatch "[:,\\s]" .Values.auth.token }}
{{- fail "auth.token must not contain ':', ',' or spaces: Falcosidekick's webhook.customHeaders (key:value,key:value) would drop the header" }}
{{- end }}
{{- if dig "tls" "client_ca_file" "" .Values.config }}
{{- fail "config.tls.client_ca_file (client certificates) is not supported by the chart: the kubelet's probes and the sidecar OPA present no client certificate. Terminate mTLS in front of the Service, or use auth.token" }}
{{- end }}
{{- if not (has .Values.opa.mode (list "sidecar" "child")) }}
{{- fail (printf "opa.mode must be sidecar or child, not %q" .Values.opa.mode) }}
{{- end }}
{{- $stateDir := trimSuffix "/" .Values.stateDir }}
{{- if not (hasPrefix "/" $stateDir) }}
{{- fail (printf "stateDir must be an absolute path, not %q" .Values.stateDir) }}
{{- end }}
{{- range list "/etc/talon-opa" "/var/run/talon-opa" "/var/cache/talon-opa" "/tmp" "/var/run/secrets" }}
{{- if or (eq $stateDir .) (hasPrefix (printf "%s/" .) $stateDir) (hasPrefix (printf "%s/" $stateDir) .) }}
{{- fail (printf "stateDir %s overlaps the chart's mount %s: choose another folder (default /var/lib/talon-opa)" $stateDir .) }}
{{- end }}
{{- end }}
{{- $auditPath := dig "audit" "path" "" .Values.config }}
{{- if $auditPath }}
{{- $writable := list $stateDir }}
{{- range .Values.extraVolumeMounts }}{{ if not .readOnly }}{{ $writable = append $writable (trimSuffix "/" .mountPath) }}{{ end }}{{ end }}
{{- $onVolume := false }}
{{- range $writable }}{{ if hasPrefix (printf "%s/" .) $auditPath }}{{ $onVolume = true }}{{ end }}{{ end }}
{{- if not $onVolume }}
{{- fail (printf "config.audit.path %s is not on a writable volume (the root filesystem is read-only): put it under stateDir, e.g. %s/audit.jsonl, or under a read-write extraVolumeMounts path" $auditPath $stateDir) }}
{{- end }}
{{- end }}
{{- if and (include "talon-opa.persistent" .) (gt (int .Values.replicaCount) 1) }}
{{- fail (printf "replicaCount %d with a persistent state_dir (persistence): the replicas would share one claim, but undo records, pending approvals and the audit trail belong to one engine (docs/undo.md). Use replicaCount: 1, or persistence.enabled: false (each pod keeps its own state in an emptyDir, lost with the pod)" (int .Values.replicaCount)) }}
{{- end }}
{{- if and .Values.operator.enabled .Values.auth.enabled }}
{{- if and .Values.operator.token (eq .Values.operator.token .Values.auth.token) }}
{{- fail "operator.token is auth.token: give the operator API a token of its own (an alert sender must not approve or undo)" }}
{{- end }}
{{- if and .Values.operator.existingSecret (eq .Values.operator.existingSecret .Values.auth.existingSecret) (eq .Values.operator.existingSecretKey .Values.auth.existingSecretKey) }}
{{- fail "operator.existingSecret/existingSecretKey is the intake token's Secret and key: give the operator API a token of its own" }}
{{- end }}
{{- end }}
{{- if and .Values.rules.existingConfigMap (not .Values.rules.fileNames) }}
{{- fail "rules.existingConfigMap needs rules.fileNames: the keys of that ConfigMap to load, in order" }}
{{- end }}
{{- end }}
