{{- define "previewd.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 53 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 53 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "previewd.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "previewd.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "previewd.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if eq $tag "latest" -}}
{{- fail "image.tag: pin a version (or set image.digest); `latest` is refused" -}}
{{- end -}}
{{ .Values.image.repository }}:{{ $tag }}
{{- end -}}
{{- end -}}

{{- define "previewd.serviceAccount" -}}
{{ include "previewd.fullname" . }}
{{- end -}}

{{- define "previewd.webhookServiceAccount" -}}
{{- if .Values.webhook.split -}}
{{ include "previewd.fullname" . }}-webhook
{{- else -}}
{{ include "previewd.fullname" . }}
{{- end -}}
{{- end -}}

{{- define "previewd.webhookSecretName" -}}
{{- if .Values.github.webhookSecret.existingSecret -}}
{{ .Values.github.webhookSecret.existingSecret }}
{{- else if .Values.github.webhookSecret.value -}}
{{ include "previewd.fullname" . }}-webhook
{{- else -}}
{{ fail "webhook.enabled needs github.webhookSecret.existingSecret (or github.webhookSecret.value): without it GitHub deliveries cannot be verified" }}
{{- end -}}
{{- end -}}

{{/* Pod security context shared by every previewd container: the restricted profile. */}}
{{- define "previewd.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "previewd.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* Environment shared by the operator and the split webhook. */}}
{{- define "previewd.commonEnv" -}}
- name: PREVIEWD_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
- name: RUST_LOG
  value: {{ .Values.logLevel | quote }}
- name: PREVIEWD_ADMIN_ADDR
  value: "0.0.0.0:8080"
- name: PREVIEWD_WEBHOOK_ADDR
  value: "0.0.0.0:8443"
{{- with .Values.watchNamespace }}
- name: PREVIEWD_NAMESPACE
  value: {{ . | quote }}
{{- end }}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- end -}}

{{- define "previewd.webhookEnv" -}}
- name: PREVIEWD_WEBHOOK_REQUIRED
  value: "true"
- name: PREVIEWD_WEBHOOK_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "previewd.webhookSecretName" . }}
      key: {{ .Values.github.webhookSecret.key }}
{{- end -}}

{{/* The manifests allow-list as --manifest-kinds: Kind for built-ins, group/version/Kind otherwise. */}}
{{- define "previewd.manifestKinds" -}}
{{- $kinds := list -}}
{{- range .Values.manifests.kinds -}}
{{- if .version -}}
{{- $kinds = append $kinds (printf "%s/%s/%s" .apiGroup .version .kind) -}}
{{- else -}}
{{- $kinds = append $kinds .kind -}}
{{- end -}}
{{- end -}}
{{- join "," $kinds -}}
{{- end -}}
