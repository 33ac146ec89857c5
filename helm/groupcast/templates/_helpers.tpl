{{/* Names. */}}
{{- define "groupcast.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "groupcast.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "groupcast.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "groupcast.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels of one component: edge, membership or nats. */}}
{{- define "groupcast.selector" -}}
app.kubernetes.io/name: {{ include "groupcast.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "groupcast.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "groupcast.authSecret" -}}
{{- .Values.auth.existingSecret | default (printf "%s-auth" (include "groupcast.fullname" .)) }}
{{- end }}

{{- define "groupcast.certsSecret" -}}
{{- .Values.membership.certs.existingSecret | default (printf "%s-membership-certs" (include "groupcast.fullname" .)) }}
{{- end }}

{{- define "groupcast.natsAuthSecret" -}}
{{- .Values.nats.auth.existingSecret | default (printf "%s-nats-auth" (include "groupcast.fullname" .)) }}
{{- end }}

{{/*
Whether the edges log in to NATS with a user and password: always with the
bundled NATS; with your own, when its password is given and no .creds file.
*/}}
{{- define "groupcast.natsEdgePassword" -}}
{{- if and .Values.nats.auth.edgeUser (not .Values.nats.auth.credentialsSecret) (or .Values.nats.enabled .Values.nats.auth.edgePassword .Values.nats.auth.existingSecret) }}true{{ end }}
{{- end }}

{{- define "groupcast.serverName" -}}
{{- .Values.membership.serverName | default (printf "%s-membership" (include "groupcast.fullname" .)) }}
{{- end }}

{{/*
The environment variable Kubernetes sets to a Service's ClusterIP
(service links): "gc-groupcast-nats-0" gives GC_GROUPCAST_NATS_0_SERVICE_HOST.
Pods reach the bundled NATS and the membership replicas through
$(VAR) references to these, so the chart works with or without cluster DNS.
*/}}
{{- define "groupcast.serviceHostVar" -}}
{{- printf "%s_SERVICE_HOST" (. | upper | replace "-" "_") }}
{{- end }}

{{/* Membership replica addresses: one per replica Service, "HOST:PORT". */}}
{{- define "groupcast.membershipAddrs" -}}
{{- $fn := include "groupcast.fullname" . }}
{{- $addrs := list }}
{{- range $i := until (int .Values.membership.replicas) }}
{{- $var := include "groupcast.serviceHostVar" (printf "%s-membership-%d" $fn $i) }}
{{- $addrs = append $addrs (printf "$(%s):%d" $var (int $.Values.membership.port)) }}
{{- end }}
{{- join "," $addrs }}
{{- end }}

{{/*
Policy and autoscaling API versions by capability, so one chart installs on
Kubernetes 1.20 through the newest. A live cluster lists what it serves;
`helm template` lists no such versions, so there --kube-version decides
(the release where the API went GA).
*/}}
{{- define "groupcast.pdbApiVersion" -}}
{{- if or (.Capabilities.APIVersions.Has "policy/v1/PodDisruptionBudget") (semverCompare ">=1.21-0" .Capabilities.KubeVersion.Version) }}policy/v1{{ else }}policy/v1beta1{{ end }}
{{- end }}

{{- define "groupcast.hpaApiVersion" -}}
{{- if or (.Capabilities.APIVersions.Has "autoscaling/v2/HorizontalPodAutoscaler") (semverCompare ">=1.23-0" .Capabilities.KubeVersion.Version) }}autoscaling/v2{{ else }}autoscaling/v2beta2{{ end }}
{{- end }}

{{/* The pod-level pieces every component shares. */}}
{{- define "groupcast.podCommon" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end }}
