{{/* Names and labels shared by every template. */}}
{{- define "kpcap.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kpcap.fullname" -}}
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

{{- define "kpcap.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "kpcap.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "kpcap.operatorSelector" -}}
app.kubernetes.io/name: {{ include "kpcap.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "kpcap.samplerSelector" -}}
app.kubernetes.io/name: {{ include "kpcap.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: sampler
{{- end -}}

{{- define "kpcap.operatorServiceAccount" -}}
{{- default (printf "%s-operator" (include "kpcap.fullname" .)) .Values.operator.serviceAccount.name -}}
{{- end -}}

{{- define "kpcap.agentServiceAccount" -}}
{{- default (printf "%s-agent" (include "kpcap.fullname" .)) .Values.agent.serviceAccount.name -}}
{{- end -}}

{{- define "kpcap.samplerServiceAccount" -}}
{{- printf "%s-sampler" (include "kpcap.fullname" .) -}}
{{- end -}}

{{- define "kpcap.samplerCaSecret" -}}
{{- default (printf "%s-sampler-ca" (include "kpcap.fullname" .)) .Values.sampler.tls.caSecret -}}
{{- end -}}

{{- define "kpcap.webhookService" -}}
{{- printf "%s-webhook" (include "kpcap.fullname" .) -}}
{{- end -}}

{{/* repository:tag, or repository@digest; the tag defaults to the chart's appVersion. */}}
{{- define "kpcap.image" -}}
{{- if .digest -}}
{{- printf "%s@%s" .repository .digest -}}
{{- else -}}
{{- printf "%s:%s" .repository (default .appVersion .tag) -}}
{{- end -}}
{{- end -}}

{{- define "kpcap.operatorImage" -}}
{{- include "kpcap.image" (merge (dict "appVersion" .Chart.AppVersion) .Values.operator.image) -}}
{{- end -}}

{{- define "kpcap.agentImage" -}}
{{- include "kpcap.image" (merge (dict "appVersion" .Chart.AppVersion) .Values.agent.image) -}}
{{- end -}}

{{/* policy/v1 from Kubernetes 1.21 (and only if the server serves it); policy/v1beta1 before. */}}
{{- define "kpcap.pdbApiVersion" -}}
{{- if and (.Capabilities.APIVersions.Has "policy/v1") (semverCompare ">=1.21-0" .Capabilities.KubeVersion.Version) -}}
policy/v1
{{- else -}}
policy/v1beta1
{{- end -}}
{{- end -}}
