{{- define "shorthorn.image" -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end -}}

{{- define "shorthorn.labels" -}}
app.kubernetes.io/name: shorthorn
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{- define "shorthorn.priorityClassName" -}}
{{- if .Values.priorityClass.create -}}{{ .Values.priorityClass.name }}{{- end -}}
{{- end -}}
