{{/* Prefix of every object name. */}}
{{- define "keg.name" -}}
{{- default "kube-egress-gateway" .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels every object carries. */}}
{{- define "keg.labels" -}}
app.kubernetes.io/name: kube-egress-gateway
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Selector labels of one component: (dict "ctx" $ "component" "operator"). */}}
{{- define "keg.selectorLabels" -}}
app.kubernetes.io/name: kube-egress-gateway
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* All labels of one component's objects. */}}
{{- define "keg.componentLabels" -}}
{{ include "keg.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Image of a component: (dict "ctx" $ "values" .Values.webhook). A component's own imageRepository /
imageTag win over common's; an empty tag means the chart's appVersion. */}}
{{- define "keg.image" -}}
{{- $common := .ctx.Values.common -}}
{{- $repo := default $common.imageRepository .values.imageRepository -}}
{{- $tag := default (default .ctx.Chart.AppVersion $common.imageTag) .values.imageTag -}}
{{- printf "%s/%s:%s" (trimSuffix "/" $repo) .values.imageName (toString $tag) -}}
{{- end -}}

{{- define "keg.operator.name" -}}{{ include "keg.name" . }}-operator{{- end -}}
{{- define "keg.gatewayAgent.name" -}}{{ include "keg.name" . }}-gateway-agent{{- end -}}
{{- define "keg.nodeAgent.name" -}}{{ include "keg.name" . }}-node-agent{{- end -}}
{{- define "keg.webhook.name" -}}{{ include "keg.name" . }}-webhook{{- end -}}
{{- /* The Secret the webhook keeps its self-generated pair in (webhookGenerated mode). */ -}}
{{- define "keg.webhook.generatedSecret" -}}{{ include "keg.webhook.name" . }}-generated{{- end -}}
{{- define "keg.webhook.tlsSecret" -}}
{{- if eq .Values.webhook.certificates.mode "existingSecret" -}}
{{- .Values.webhook.certificates.existingSecret.name -}}
{{- else -}}
{{ include "keg.webhook.name" . }}-tls
{{- end -}}
{{- end -}}
{{/* The Secret the operator reads its cloud configuration from: config.existingSecret, or the chart's own. */}}
{{- define "keg.cloudConfigSecret" -}}
{{- default (printf "%s-azure-cloud-config" (include "keg.name" .)) .Values.config.existingSecret.name -}}
{{- end -}}

{{/* Namespace of the configurations' WireGuard key Secrets (sgw-<uid>, --secret-namespace):
common.keySecretNamespace, or the release namespace when it is empty (or absent: values kept by
`helm upgrade --reuse-values` from an older chart). */}}
{{- define "keg.keySecretNamespace" -}}
{{- default .Release.Namespace .Values.common.keySecretNamespace -}}
{{- end -}}

{{/* "true" when the key Secrets have a namespace of their own (not the release namespace): their RBAC then
goes into a Role there, and the release namespace's Roles grant no Secret. */}}
{{- define "keg.keySecretsApart" -}}
{{- if ne (include "keg.keySecretNamespace" .) .Release.Namespace }}true{{ end -}}
{{- end -}}

{{/* The node agent's identity, the only user allowed to write PodEndpoints. */}}
{{- define "keg.nodeAgent.user" -}}
system:serviceaccount:{{ .Release.Namespace }}:{{ include "keg.nodeAgent.name" . }}
{{- end -}}

{{/* Security context of a container that needs no privilege at all. */}}
{{- define "keg.restrictedContainer" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
{{- end -}}

{{/* The container runtime's default seccomp profile: every pod runs under it. (Privileged containers, the
gateway agent's netns-init only, are unconfined whatever it says.) */}}
{{- define "keg.runtimeDefaultSeccomp" -}}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Pod security context of the operator and the webhook. */}}
{{- define "keg.restrictedPod" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
{{ include "keg.runtimeDefaultSeccomp" . }}
{{- end -}}

{{- define "keg.podEnv" -}}
- name: MY_NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
- name: MY_POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- end -}}

{{- define "keg.imagePullSecrets" -}}
{{- with .Values.common.imagePullSecrets -}}
imagePullSecrets:
{{ toYaml . }}
{{- end -}}
{{- end -}}

{{/* --log-format only when not the binaries' default (text). */}}
{{- define "keg.logFormatArg" -}}
{{- if ne .Values.common.logFormat "text" -}}
- --log-format={{ .Values.common.logFormat }}
{{- end -}}
{{- end -}}

{{/* Fields every webhook entry shares: (dict "ns" "name" "caBundle" "timeout" "path"). */}}
{{- define "keg.webhook.client" -}}
clientConfig:
  service:
    namespace: {{ .ns }}
    name: {{ .name }}
    path: {{ .path }}
    port: 443
  {{- if .caBundle }}
  caBundle: {{ .caBundle }}
  {{- end }}
admissionReviewVersions: [v1]
sideEffects: None
matchPolicy: Equivalent
timeoutSeconds: {{ .timeout }}
{{- end -}}
