{{/*
Shared names, labels, images and security settings. Every workload uses the same restricted
pod and container security contexts, so the Pod Security "restricted" profile holds everywhere.
*/}}

{{- define "lifeboat.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "lifeboat.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* "<fullname>-<component>", kept within 63 characters. Call with (list $ "hook"). */}}
{{- define "lifeboat.componentName" -}}
{{- $root := index . 0 -}}
{{- $component := index . 1 -}}
{{- printf "%s-%s" (include "lifeboat.fullname" $root | trunc (int (sub 62 (len $component)))) $component | trimSuffix "-" -}}
{{- end -}}

{{/*
Name of a cluster-scoped object of a component: the component name plus the release namespace,
so two releases of the same name in different namespaces never collide.
Call with (list $ "etcdsnap").
*/}}
{{- define "lifeboat.clusterScopedName" -}}
{{- $root := index . 0 -}}
{{- printf "%s-%s" (include "lifeboat.componentName" .) $root.Release.Namespace | trunc 253 | trimSuffix "-" -}}
{{- end -}}

{{- define "lifeboat.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels: stable across upgrades. Call with (list $ "hook"). */}}
{{- define "lifeboat.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "lifeboat.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* The recommended labels. Call with (list $ "hook"). */}}
{{- define "lifeboat.labels" -}}
{{- $root := index . 0 -}}
{{ include "lifeboat.selectorLabels" . }}
app.kubernetes.io/part-of: lifeboat
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
helm.sh/chart: {{ include "lifeboat.chart" $root }}
{{- with $root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* An image reference. Call with (list $ .Values.hook.image). */}}
{{- define "lifeboat.image" -}}
{{- $root := index . 0 -}}
{{- $image := index . 1 -}}
{{- $repo := $image.repository -}}
{{- if not (contains "/" $repo) -}}
{{- $repo = printf "%s/%s" $root.Values.image.registry $repo -}}
{{- end -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $repo $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (default (default $root.Chart.AppVersion $root.Values.image.tag) $image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "lifeboat.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "lifeboat.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
extraEnv as env entries: string values only, empty ones left out, names the chart already sets
refused. Call with (list .Values.s3sync.extraEnv (list "LOG_LEVEL" ...) "s3sync").
*/}}
{{- define "lifeboat.extraEnv" -}}
{{- $extra := index . 0 -}}
{{- $reserved := index . 1 -}}
{{- $component := index . 2 -}}
{{- range $name := keys $extra | sortAlpha }}
{{- $value := get $extra $name }}
{{- if has $name $reserved }}
{{- fail (printf "%s.extraEnv.%s: set by the chart from its own value; set that value instead" $component $name) }}
{{- end }}
{{- if and (not (kindIs "invalid" $value)) (ne (toString $value) "") }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
The hook's annotation prefix ("<variant>.litestream-hook.kaidotio.github.io" with a variant).
*/}}
{{- define "lifeboat.hookPrefix" -}}
{{- $prefix := "litestream-hook.kaidotio.github.io" -}}
{{- if .Values.hook.variant }}{{ $prefix = printf "%s.%s" .Values.hook.variant $prefix }}{{ end -}}
{{- $prefix -}}
{{- end -}}

{{/*
The label only the hook's own Pods carry; its webhook never selects a Pod that has it (the hook
cannot wait for itself to start). A label of its own, not app.kubernetes.io/instance: another
application installed under the same release name must still be injected.
*/}}
{{- define "lifeboat.hookSelfLabel" -}}
{{- printf "%s/webhook-self" (include "lifeboat.hookPrefix" .) -}}
{{- end -}}
