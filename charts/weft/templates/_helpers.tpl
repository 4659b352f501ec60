{{/* Chart name, truncated to the 63 characters a label allows. */}}
{{- define "weft.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified name: the release name, unless it already contains the chart name. */}}
{{- define "weft.fullname" -}}
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

{{- define "weft.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "weft.selectorLabels" -}}
app.kubernetes.io/name: {{ include "weft.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "weft.labels" -}}
helm.sh/chart: {{ include "weft.chart" . }}
{{ include "weft.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: router
{{- end }}

{{- define "weft.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "weft.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "weft.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The Secret holding the password: the user's, or the chart's own; empty without a password. */}}
{{- define "weft.passwordSecret" -}}
{{- if .Values.password.existingSecret }}
{{- .Values.password.existingSecret }}
{{- else if .Values.password.value }}
{{- default (printf "%s-password" (include "weft.fullname" .)) .Values.password.secretName }}
{{- end }}
{{- end }}

{{/* The port of an ip:port, and the host to reach it at (loopback for a wildcard bind). */}}
{{- define "weft.addrPort" -}}
{{- regexFind "[0-9]+$" . }}
{{- end }}

{{- define "weft.addrHost" -}}
{{- $host := regexReplaceAll ":[0-9]+$" . "" | trimPrefix "[" | trimSuffix "]" }}
{{- if eq $host "0.0.0.0" }}127.0.0.1{{ else if eq $host "::" }}::1{{ else }}{{ $host }}{{ end }}
{{- end }}

{{/* The probes' listener: the read-only metrics listener when it is on, else the status
endpoint. Both answer /healthz and /readyz; the metrics listener keeps the kubelet's probes off
the control endpoint's connection budget, which `weft status` and the CLI share. */}}
{{- define "weft.probeAddr" -}}
{{- if .Values.metrics.enabled }}{{ .Values.metrics.addr }}{{ else }}{{ .Values.statusAddr }}{{ end }}
{{- end }}

{{/* The router container's securityContext: the user's, privileged, or the minimal one. */}}
{{- define "weft.securityContext" -}}
{{- if .Values.securityContext }}
{{- toYaml .Values.securityContext }}
{{- else if .Values.privileged }}
privileged: true
readOnlyRootFilesystem: true
runAsUser: 0
{{- else }}
privileged: false
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsUser: 0
seccompProfile:
  type: RuntimeDefault
capabilities:
  drop: ["ALL"]
  # Links, addresses, the TAP device (TUNSETIFF), the VXLAN device and its forwarding
  # entries, nftables and the network sysctls; NET_RAW: the fast path's heartbeats (AF_PACKET).
  add: ["NET_ADMIN", "NET_RAW"]
{{- end }}
{{- end }}
