{{/* The release's resource name: the release name, with the chart's unless it contains it. */}}
{{- define "fjord.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "fjord.headless" -}}
{{- printf "%s-headless" (include "fjord.fullname" .) -}}
{{- end -}}

{{- define "fjord.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "fjord.labels" -}}
{{ include "fjord.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Pod i's DNS name through the headless service. */}}
{{- define "fjord.podHost" -}}
{{- $ctx := index . 0 -}}
{{- printf "%s-%d.%s.%s.svc.%s" (include "fjord.fullname" $ctx) (index . 1) (include "fjord.headless" $ctx) $ctx.Release.Namespace $ctx.Values.clusterDomain -}}
{{- end -}}

{{/* controller_quorum_voters: the first controller.voters pods, id@host:port. */}}
{{- define "fjord.voters" -}}
{{- if gt (int .Values.controller.voters) (int .Values.replicas) -}}
{{- fail (printf "controller.voters (%d) cannot exceed replicas (%d)" (int .Values.controller.voters) (int .Values.replicas)) -}}
{{- end -}}
{{- $voters := list -}}
{{- range $i := until (int .Values.controller.voters) -}}
{{- $voters = append $voters (printf "%d@%s:%d" $i (include "fjord.podHost" (list $ $i)) (int $.Values.ports.cluster)) -}}
{{- end -}}
{{- join "," $voters -}}
{{- end -}}

{{- define "fjord.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
