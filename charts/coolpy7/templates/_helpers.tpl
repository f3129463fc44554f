{{/* The release's full name, at most 63 characters (a DNS label). */}}
{{- define "coolpy7.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "coolpy7.operatorName" -}}
{{- printf "%s-operator" (include "coolpy7.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Cluster-wide objects carry the namespace, so releases of one name in two namespaces
do not collide. */}}
{{- define "coolpy7.clusterScopedName" -}}
{{- printf "%s-%s" .Release.Namespace (include "coolpy7.operatorName" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "coolpy7.clusterName" -}}
{{- default (include "coolpy7.fullname" .) .Values.cluster.name | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{- define "coolpy7.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "coolpy7.operatorName" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "coolpy7.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object of the release. */}}
{{- define "coolpy7.labels" -}}
helm.sh/chart: {{ include "coolpy7.chart" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: coolpy7
{{- end -}}

{{/* The operator's pod selector. */}}
{{- define "coolpy7.operatorSelectorLabels" -}}
app.kubernetes.io/name: coolpy7-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "coolpy7.operatorImage" -}}
{{- printf "%s:%s" .Values.operator.image.repository (default .Chart.AppVersion .Values.operator.image.tag) -}}
{{- end -}}

{{/* The Secret holding the brokers' certificate: cluster.tls.secretName, else the one the
cert-manager Certificate writes (<cluster name>-tls), else none. */}}
{{- define "coolpy7.tlsSecretName" -}}
{{- $tls := .Values.cluster.tls -}}
{{- if $tls.secretName -}}
{{- $tls.secretName -}}
{{- else if $tls.certManager.issuerRef.name -}}
{{- printf "%s-tls" (include "coolpy7.clusterName" .) -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding the password file: cluster.auth.passwords.existingSecret, else the one
the chart writes from .content (<cluster name>-passwords), else none. */}}
{{- define "coolpy7.passwordsSecretName" -}}
{{- $passwords := .Values.cluster.auth.passwords -}}
{{- if $passwords.existingSecret -}}
{{- $passwords.existingSecret -}}
{{- else if $passwords.content -}}
{{- printf "%s-passwords" (include "coolpy7.clusterName" .) -}}
{{- end -}}
{{- end -}}

{{/* The ConfigMap holding the authorization rules: cluster.auth.acl.existingConfigMap, else
the one the chart writes from .rules (<cluster name>-acl), else none. */}}
{{- define "coolpy7.aclConfigMapName" -}}
{{- $acl := .Values.cluster.auth.acl -}}
{{- if $acl.existingConfigMap -}}
{{- $acl.existingConfigMap -}}
{{- else if $acl.rules -}}
{{- printf "%s-acl" (include "coolpy7.clusterName" .) -}}
{{- end -}}
{{- end -}}
