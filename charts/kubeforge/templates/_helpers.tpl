{{/* Name of the chart, or nameOverride. */}}
{{- define "kubeforge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name of the release's objects: release name + chart name, unless the release name already holds it. */}}
{{- define "kubeforge.fullname" -}}
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

{{- define "kubeforge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the operator pod; never change them (Deployment selectors are immutable). */}}
{{- define "kubeforge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubeforge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of every object of the release. */}}
{{- define "kubeforge.labels" -}}
helm.sh/chart: {{ include "kubeforge.chart" . }}
{{ include "kubeforge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kubeforge
{{- end }}

{{- define "kubeforge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kubeforge.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name must name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository@digest when a digest is set, else repository:tag (tag defaults to the chart's appVersion). */}}
{{- define "kubeforge.imageRef" -}}
{{- $image := index . 0 }}
{{- $root := index . 1 }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{- define "kubeforge.operatorImage" -}}
{{- include "kubeforge.imageRef" (list .Values.image .) }}
{{- end }}

{{- define "kubeforge.trainerImage" -}}
{{- include "kubeforge.imageRef" (list .Values.trainer.image .) }}
{{- end }}

{{/* The peering name is fixed in the operator (kubeforge.controller.PEERING_NAME). */}}
{{- define "kubeforge.peeringName" -}}
kubeforge
{{- end }}

{{/* Namespaces of the workload ServiceAccount, as a JSON list. */}}
{{- define "kubeforge.workloadNamespaces" -}}
{{- if .Values.workload.namespaces }}
{{- .Values.workload.namespaces | uniq | toJson }}
{{- else if .Values.watchNamespaces }}
{{- .Values.watchNamespaces | uniq | toJson }}
{{- else }}
{{- list .Release.Namespace | toJson }}
{{- end }}
{{- end }}

{{/*
Rules the operator needs in every namespace it watches (cluster mode: everywhere). Each verb here is used by the
operator; docs/install.md explains why.
*/}}
{{- define "kubeforge.operatorNamespacedRules" -}}
# The three kinds: the operator watches them (watch-event handlers only, so kopf adds no finalizer or annotations);
# patch only removes the finalizer that earlier operator versions put on them, so it never blocks a deletion.
- apiGroups: ["kubeforge.dev"]
  resources: ["datapipelines", "trainingjobs", "modeldeployments"]
  verbs: ["get", "list", "watch", "patch"]
# Their status: phase, conditions, progress.
- apiGroups: ["kubeforge.dev"]
  resources: ["datapipelines/status", "trainingjobs/status", "modeldeployments/status"]
  verbs: ["get", "patch"]
# The children the operator creates, reads and updates (suspend, roll-out). No delete: they carry owner references,
# and the garbage collector removes them with their resource.
- apiGroups: ["ray.io"]
  resources: ["rayjobs", "rayservices"]
  verbs: ["get", "list", "watch", "create", "patch"]
# Kubernetes events on the resources: kopf posts (creates) core v1 Events, and never patches them.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
# PodMonitors / ServiceMonitors for the Ray pods' metrics when a resource asks for monitoring.
- apiGroups: ["monitoring.coreos.com"]
  resources: ["podmonitors", "servicemonitors"]
  verbs: ["get", "create", "patch", "delete"]
# Each run's own identity (docs/operator.md, trust boundary): a ServiceAccount, a Role that may get its resource and
# get/patch that resource's status only (resourceNames), and their RoleBinding, all owned by the resource (no delete:
# the garbage collector removes them). get reads an existing one back after a 409. Kubernetes lets a subject create a
# Role or RoleBinding only with permissions it holds itself: the operator holds get on the kinds and get/patch on
# their status (above), so it needs neither escalate nor bind.
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["get", "create"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "create"]
{{- if .Values.watchNamespaces }}
# kopf peering inside the namespace (namespaced mode): watch the peering kind, heartbeat into our object only.
- apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings"]
  verbs: ["list", "watch"]
- apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings"]
  resourceNames: [{{ include "kubeforge.peeringName" . | quote }}]
  verbs: ["get", "patch"]
{{- end }}
{{- end }}

{{/* Rules the operator needs on cluster-scoped resources in both modes. */}}
{{- define "kubeforge.operatorClusterRules" -}}
# kopf lists and watches CRDs to notice the resources it serves appear and change.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
{{- if not .Values.watchNamespaces }}
{{- /*
No access to namespaces: watchNamespaces takes exact names (values.schema.json), which the operator gives kopf with
namespace scanning off, so kopf never lists namespaces; cluster-wide it serves all namespaces without listing them.
Only glob patterns (`kubeforge operator --namespace 'team-*'`) need list/watch on namespaces: grant it yourself then.
*/}}
# kopf peering across the cluster: watch the peering kind, heartbeat into our object only.
- apiGroups: ["kopf.dev"]
  resources: ["clusterkopfpeerings"]
  verbs: ["list", "watch"]
- apiGroups: ["kopf.dev"]
  resources: ["clusterkopfpeerings"]
  resourceNames: [{{ include "kubeforge.peeringName" . | quote }}]
  verbs: ["get", "patch"]
{{- end }}
{{- end }}

{{/* Fail early on combinations the schema cannot express. */}}
{{- define "kubeforge.validate" -}}
{{- if eq (int .Values.operator.metricsPort) (int .Values.operator.healthPort) }}
{{- fail "operator.metricsPort and operator.healthPort must differ" }}
{{- end }}
{{- range .Values.operator.extraEnv }}
{{- if or (hasPrefix "KUBEFORGE_" .name) (eq .name "POD_ID") }}
{{- fail (printf "operator.extraEnv must not set %s: the chart sets it from its own values (see values.yaml)" .name) }}
{{- end }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.service.enabled) }}
{{- fail "metrics.serviceMonitor.enabled needs metrics.service.enabled: the ServiceMonitor scrapes that Service" }}
{{- end }}
{{- end }}
