{{- define "previewd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 53 | trimSuffix "-" -}}
{{- end -}}

{{/* Objects are named <fullname>[-suffix]; 53 characters leave room for the suffixes. */}}
{{- define "previewd.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 53 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "previewd.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 53 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 53 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "previewd.labels" -}}
app.kubernetes.io/name: {{ include "previewd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "previewd.selector" -}}
app.kubernetes.io/name: {{ include "previewd.name" . }}
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

{{/* The controller's ServiceAccount. */}}
{{- define "previewd.serviceAccount" -}}
{{- if .Values.serviceAccount.create -}}
{{ default (include "previewd.fullname" .) .Values.serviceAccount.name }}
{{- else -}}
{{ required "serviceAccount.name is required with serviceAccount.create=false" .Values.serviceAccount.name }}
{{- end -}}
{{- end -}}

{{/* Whether the webhook runs in its own Deployment. */}}
{{- define "previewd.webhookSplit" -}}
{{- if and .Values.webhook.enabled .Values.webhook.split }}true{{ end -}}
{{- end -}}

{{/* The ServiceAccount the webhook runs as. */}}
{{- define "previewd.webhookServiceAccount" -}}
{{- if include "previewd.webhookSplit" . -}}
{{- if .Values.webhook.serviceAccount.create -}}
{{ default (printf "%s-webhook" (include "previewd.fullname" .)) .Values.webhook.serviceAccount.name }}
{{- else -}}
{{ required "webhook.serviceAccount.name is required with webhook.serviceAccount.create=false" .Values.webhook.serviceAccount.name }}
{{- end -}}
{{- else -}}
{{ include "previewd.serviceAccount" . }}
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

{{/* GitHub credentials are configured (a token or an App). */}}
{{- define "previewd.githubCredentials" -}}
{{- if or .Values.github.token.existingSecret .Values.github.app.id }}true{{ end -}}
{{- end -}}

{{/* The namespace whose pods may reach previews (the ingress controller or gateway). */}}
{{- define "previewd.ingressNamespace" -}}
{{- if .Values.ingressNamespace -}}
{{ .Values.ingressNamespace }}
{{- else if eq .Values.routing.kind "httproute" -}}
{{ .Values.routing.gateway.namespace }}
{{- else -}}
{{ fail "ingressNamespace: name the namespace of your ingress controller (with routing.kind=httproute it defaults to the Gateway's namespace)" }}
{{- end -}}
{{- end -}}

{{/* GitHub credentials as environment variables (the controller and the webhook). */}}
{{- define "previewd.githubEnv" -}}
- name: PREVIEWD_GITHUB_API_URL
  value: {{ .Values.github.apiUrl | quote }}
{{- if .Values.github.token.existingSecret }}
- name: PREVIEWD_GITHUB_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ .Values.github.token.existingSecret }}
      key: {{ .Values.github.token.key }}
{{- else if .Values.github.app.id }}
- name: PREVIEWD_GITHUB_APP_ID
  value: {{ .Values.github.app.id | quote }}
{{- with .Values.github.app.installationId }}
- name: PREVIEWD_GITHUB_APP_INSTALLATION_ID
  value: {{ . | quote }}
{{- end }}
- name: PREVIEWD_GITHUB_APP_PRIVATE_KEY_FILE
  value: /var/run/secrets/previewd/github-app/{{ .Values.github.app.key }}
{{- end }}
{{- end -}}

{{/* The GitHub App's key, mounted where PREVIEWD_GITHUB_APP_PRIVATE_KEY_FILE points. */}}
{{- define "previewd.githubAppMounted" -}}
{{- if and .Values.github.app.id (not .Values.github.token.existingSecret) }}true{{ end -}}
{{- end -}}

{{- define "previewd.githubAppVolume" -}}
- name: github-app
  secret:
    secretName: {{ required "github.app.existingSecret (the App's private key) is required with github.app.id" .Values.github.app.existingSecret }}
{{- end -}}

{{- define "previewd.githubAppMount" -}}
- name: github-app
  mountPath: /var/run/secrets/previewd/github-app
  readOnly: true
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
{{- with .Values.repositoryClaims }}
- name: PREVIEWD_REPOSITORY_CLAIMS
  value: {{ include "previewd.repositoryClaims" $ | quote }}
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

{{/* repositoryClaims as --repository-claims: `namespace=pattern,pattern;namespace=...`. */}}
{{- define "previewd.repositoryClaims" -}}
{{- $entries := list -}}
{{- range $namespace, $patterns := .Values.repositoryClaims -}}
{{- $entries = append $entries (printf "%s=%s" $namespace (join "," $patterns)) -}}
{{- end -}}
{{- join ";" $entries -}}
{{- end -}}

{{/* Settings the webhook handling reads (the webhook, and the backfill in the controller). */}}
{{- define "previewd.commandEnv" -}}
- name: PREVIEWD_MAINTAINER_ROLE
  value: {{ .Values.commands.maintainerRole | quote }}
- name: PREVIEWD_MAINTAINER_CUSTOM_ROLES
  value: {{ join "," .Values.commands.maintainerCustomRoles | quote }}
- name: PREVIEWD_PERMISSION_CACHE_TTL
  value: {{ .Values.commands.permissionCacheTtl | quote }}
- name: PREVIEWD_COMMAND_ASSOCIATIONS
  value: {{ join "," .Values.commands.associations | quote }}
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

{{/* `key=value,...` from a map. */}}
{{- define "previewd.pairs" -}}
{{- $pairs := list -}}
{{- range $k, $v := . -}}
{{- $pairs = append $pairs (printf "%s=%v" $k $v) -}}
{{- end -}}
{{- join "," $pairs -}}
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

{{/* A PodDisruptionBudget spec from {enabled, minAvailable, maxUnavailable}. */}}
{{- define "previewd.pdbSpec" -}}
{{- if and .minAvailable .maxUnavailable -}}
{{- fail "podDisruptionBudget: set minAvailable or maxUnavailable, not both" -}}
{{- end -}}
{{- if .maxUnavailable -}}
maxUnavailable: {{ .maxUnavailable }}
{{- else -}}
minAvailable: {{ default 1 .minAvailable }}
{{- end -}}
{{- end -}}

{{/* Topology spread of a component: as configured, else over nodes when possible. */}}
{{- define "previewd.topologySpread" -}}
{{- $root := index . 0 -}}
{{- $component := index . 1 -}}
{{- $values := index . 2 -}}
{{- if $values.topologySpreadConstraints -}}
{{ toYaml $values.topologySpreadConstraints }}
{{- else -}}
- maxSkew: 1
  topologyKey: kubernetes.io/hostname
  whenUnsatisfiable: ScheduleAnyway
  labelSelector:
    matchLabels:
      {{- include "previewd.selector" $root | nindent 6 }}
      app.kubernetes.io/component: {{ $component }}
{{- end -}}
{{- end -}}

{{/* The prometheus job the alerts select. */}}
{{- define "previewd.metricsJob" -}}
{{- if .Values.metrics.prometheusRule.job -}}
{{ .Values.metrics.prometheusRule.job }}
{{- else if .Values.metrics.podMonitor.enabled -}}
{{ printf "%s/%s" .Release.Namespace (include "previewd.fullname" .) }}
{{- else -}}
{{ include "previewd.fullname" . }}-metrics
{{- end -}}
{{- end -}}
