{{/* Name of a role's objects: <release>-<role>, or the chart name when the release contains it. */}}
{{- define "ij.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ij.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one role: pass (dict "ctx" $ "role" "controller"). */}}
{{- define "ij.selector" -}}
app.kubernetes.io/name: {{ .ctx.Chart.Name }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .role }}
{{- end -}}

{{/* A role's replicas spread over nodes (ROLE in dict "ctx" "role"): a preference that never
keeps a pod from being scheduled. */}}
{{- define "ij.spread" -}}
{{- if .ctx.Values.topologySpread.enabled -}}
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: {{ .ctx.Values.topologySpread.topologyKey }}
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "ij.selector" . | nindent 8 }}
{{- end }}
{{- end -}}

{{- define "ij.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "ij.jobNamespace" -}}
{{ .Values.facade.jobNamespace | default .Release.Namespace }}
{{- end -}}

{{/* The seed's Temporal variables and the log format, shared by every role. */}}
{{- define "ij.commonEnv" -}}
- name: TEMPORAL_HOST
  value: {{ .Values.temporal.host | quote }}
- name: TEMPORAL_PORT
  value: {{ .Values.temporal.port | quote }}
- name: TEMPORAL_NAMESPACE
  value: {{ .Values.temporal.namespace | quote }}
- name: TEMPORAL_TASK_QUEUE
  value: {{ .Values.temporal.taskQueue | quote }}
- name: TEMPORAL_GRPC_COMPRESSION
  value: {{ .Values.temporal.grpcCompression | quote }}
{{- $t := .Values.temporal }}
{{- with $t.address }}
- name: TEMPORAL_ADDRESS
  value: {{ . | quote }}
{{- end }}
{{- if $t.tls.enabled }}
- name: TEMPORAL_TLS
  value: "true"
{{- with $t.tls.serverName }}
- name: TEMPORAL_TLS_SERVER_NAME
  value: {{ . | quote }}
{{- end }}
{{- if and $t.tls.existingSecret $t.tls.caKey }}
- name: TEMPORAL_TLS_SERVER_CA_CERT_PATH
  value: /etc/temporal/tls/ca.crt
{{- end }}
{{- if and $t.tls.existingSecret $t.tls.clientCertificate }}
- name: TEMPORAL_TLS_CLIENT_CERT_PATH
  value: /etc/temporal/tls/tls.crt
- name: TEMPORAL_TLS_CLIENT_KEY_PATH
  value: /etc/temporal/tls/tls.key
{{- end }}
{{- end }}
{{- if $t.apiKey.existingSecret }}
- name: TEMPORAL_API_KEY_FILE
  value: /etc/temporal/api-key/api-key
{{- end }}
{{- if $t.payloadEncryption.enabled }}
- name: PAYLOAD_ENCRYPTION_KEYS_DIR
  value: /etc/temporal/payload-keys
- name: PAYLOAD_ENCRYPTION_KEY_ID
  value: {{ required "temporal.payloadEncryption.currentKeyId is required when payload encryption is enabled" $t.payloadEncryption.currentKeyId | quote }}
{{- end }}
- name: LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
{{- end -}}

{{/* "true" when Temporal credentials are mounted from Secrets. */}}
{{- define "ij.temporalSecrets" -}}
{{- $t := .Values.temporal -}}
{{- if or (and $t.tls.enabled $t.tls.existingSecret) $t.apiKey.existingSecret $t.payloadEncryption.enabled }}true{{ end -}}
{{- end -}}

{{/* Mounts of the Temporal credential Secrets (whole directories, so rotation reaches them). */}}
{{- define "ij.temporalMounts" -}}
{{- $t := .Values.temporal -}}
{{- if and $t.tls.enabled $t.tls.existingSecret }}
- {name: temporal-tls, mountPath: /etc/temporal/tls, readOnly: true}
{{- end }}
{{- if $t.apiKey.existingSecret }}
- {name: temporal-api-key, mountPath: /etc/temporal/api-key, readOnly: true}
{{- end }}
{{- if $t.payloadEncryption.enabled }}
- {name: payload-keys, mountPath: /etc/temporal/payload-keys, readOnly: true}
{{- end }}
{{- end -}}

{{/* Volumes of the Temporal credential Secrets. */}}
{{- define "ij.temporalVolumes" -}}
{{- $t := .Values.temporal -}}
{{- if and $t.tls.enabled $t.tls.existingSecret }}
- name: temporal-tls
  secret:
    secretName: {{ $t.tls.existingSecret }}
    items:
      {{- if $t.tls.caKey }}
      - {key: {{ $t.tls.caKey }}, path: ca.crt}
      {{- end }}
      {{- if $t.tls.clientCertificate }}
      - {key: {{ $t.tls.certKey }}, path: tls.crt}
      - {key: {{ $t.tls.keyKey }}, path: tls.key}
      {{- end }}
{{- end }}
{{- if $t.apiKey.existingSecret }}
- name: temporal-api-key
  secret:
    secretName: {{ $t.apiKey.existingSecret }}
    items:
      - {key: {{ $t.apiKey.key }}, path: api-key}
{{- end }}
{{- if $t.payloadEncryption.enabled }}
- name: payload-keys
  secret:
    secretName: {{ required "temporal.payloadEncryption.existingSecret is required when payload encryption is enabled" $t.payloadEncryption.existingSecret }}
{{- end }}
{{- end -}}

{{/* Pod-level settings shared by every role. */}}
{{- define "ij.podSpecCommon" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* HTTP probes on a named port. */}}
{{- define "ij.probes" -}}
livenessProbe:
  httpGet: {path: /healthz, port: {{ . }}}
  periodSeconds: 10
readinessProbe:
  httpGet: {path: /readyz, port: {{ . }}}
  periodSeconds: 5
{{- end -}}
