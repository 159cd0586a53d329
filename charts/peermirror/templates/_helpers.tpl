{{/* Chart name, possibly overridden. */}}
{{- define "peermirror.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Prefix of every resource name: release-chart, unless the release name already holds the chart name. */}}
{{- define "peermirror.fullname" -}}
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

{{- define "peermirror.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "peermirror.selectorLabels" -}}
app.kubernetes.io/name: {{ include "peermirror.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "peermirror.labels" -}}
helm.sh/chart: {{ include "peermirror.chart" . }}
{{ include "peermirror.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "peermirror.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "peermirror.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "peermirror.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* Image of the host-files containers: its own when set, else the peermirror image. */}}
{{- define "peermirror.helperImage" -}}
{{- with .Values.hostFiles.image }}
{{- if .repository }}
{{- printf "%s:%s" .repository (required "hostFiles.image.tag is required with hostFiles.image.repository" .tag) }}
{{- else }}
{{- include "peermirror.image" $ }}
{{- end }}
{{- end }}
{{- end }}

{{- define "peermirror.helperPullPolicy" -}}
{{- .Values.hostFiles.image.pullPolicy | default .Values.image.pullPolicy }}
{{- end }}

{{/* Booleans come back as "true" or "" so they work with `if`. */}}
{{- define "peermirror.tlsEnabled" -}}
{{- if or .Values.tls.existingSecret .Values.tls.certManager.enabled .Values.tls.generate.enabled }}true{{ end }}
{{- end }}

{{/* Where the TLS files come from: existing, certManager or generate (or "" for no TLS). */}}
{{- define "peermirror.tlsSource" -}}
{{- if .Values.tls.existingSecret }}existing
{{- else if .Values.tls.certManager.enabled }}certManager
{{- else if .Values.tls.generate.enabled }}generate
{{- end }}
{{- end }}

{{- define "peermirror.needsClientCert" -}}
{{- if has .Values.auth.mode (list "mtls" "mtls+token") }}true{{ end }}
{{- end }}

{{- define "peermirror.needsToken" -}}
{{- if has .Values.auth.mode (list "token" "mtls+token") }}true{{ end }}
{{- end }}

{{- define "peermirror.crlEnabled" -}}
{{- if or .Values.tls.crl.existingSecret .Values.tls.crl.existingConfigMap }}true{{ end }}
{{- end }}

{{/* Host files are needed when containerd must verify the mirror's certificate. */}}
{{- define "peermirror.hostFilesEnabled" -}}
{{- include "peermirror.tlsEnabled" . }}
{{- end }}

{{- define "peermirror.tlsSecretName" -}}
{{- if .Values.tls.existingSecret }}
{{- .Values.tls.existingSecret }}
{{- else }}
{{- printf "%s-tls" (include "peermirror.fullname" .) }}
{{- end }}
{{- end }}

{{- define "peermirror.tokenSecretName" -}}
{{- .Values.auth.token.existingSecret | default (printf "%s-token" (include "peermirror.fullname" .)) }}
{{- end }}

{{- define "peermirror.signingKeySecretName" -}}
{{- .Values.auth.token.signingKey.existingSecret | default (printf "%s-token-signing-key" (include "peermirror.fullname" .)) }}
{{- end }}

{{- define "peermirror.signingKeySecretKey" -}}
{{- if .Values.auth.token.signingKey.existingSecret }}{{ .Values.auth.token.signingKey.key }}{{ else }}signing-key{{ end }}
{{- end }}

{{- define "peermirror.tokenSecretKey" -}}
{{- if .Values.auth.token.existingSecret }}{{ .Values.auth.token.key }}{{ else }}token{{ end }}
{{- end }}

{{- define "peermirror.pskSecretName" -}}
{{- .Values.p2p.psk.existingSecret | default (printf "%s-p2p-psk" (include "peermirror.fullname" .)) }}
{{- end }}

{{- define "peermirror.pskSecretKey" -}}
{{- if .Values.p2p.psk.existingSecret }}{{ .Values.p2p.psk.key }}{{ else }}psk{{ end }}
{{- end }}

{{- define "peermirror.peerServerName" -}}
{{- .Values.tls.peerServerName | default (printf "%s.%s.svc" (include "peermirror.fullname" .) .Release.Namespace) }}
{{- end }}

{{/* The headless Service's name, resolved by --bootstrap dns:. */}}
{{- define "peermirror.bootstrapHost" -}}
{{- printf "%s.%s.svc.%s" (include "peermirror.fullname" .) .Release.Namespace (.Values.clusterDomain | trimSuffix ".") }}
{{- end }}

{{- define "peermirror.mirrorURL" -}}
{{- $scheme := ternary "https" "http" (eq (include "peermirror.tlsEnabled" .) "true") }}
{{- $host := .Values.containerd.mirrorHost }}
{{- if and (contains ":" $host) (not (hasPrefix "[" $host)) }}
{{- $host = printf "[%s]" $host }}
{{- end }}
{{- printf "%s://%s:%d" $scheme $host (int .Values.ports.registry) }}
{{- end }}

{{/* Paths inside the containers. Secrets are mounted as whole directories (never subPath) so
     the kubelet's updates reach the files, which peermirror reloads. */}}
{{- define "peermirror.secretsDir" -}}/secrets{{- end }}
{{- define "peermirror.dataDir" -}}/var/lib/peermirror{{- end }}

{{/* Refuse value combinations the schema cannot express, with a message saying what to do. */}}
{{- define "peermirror.validate" -}}
{{- $v := .Values }}
{{- if and (eq $v.auth.mode "none") (not $v.auth.insecureNoAuth) }}
{{- fail "auth.mode none lets anyone who reaches the registry port pull through the node: set auth.insecureNoAuth=true to accept that, or use mtls, token or mtls+token" }}
{{- end }}
{{- if and $v.auth.insecureNoAuth (ne $v.auth.mode "none") }}
{{- fail "auth.insecureNoAuth=true only goes with auth.mode none" }}
{{- end }}
{{- if and $v.tls.existingSecret $v.tls.certManager.enabled }}
{{- fail "set either tls.existingSecret or tls.certManager.enabled, not both" }}
{{- end }}
{{- if and (include "peermirror.needsClientCert" .) (not (include "peermirror.tlsEnabled" .)) }}
{{- fail (printf "auth.mode %s needs TLS: set tls.existingSecret (tls.crt, tls.key, ca.crt), tls.certManager.enabled=true with tls.certManager.issuerRef.name, or tls.generate.enabled=true" $v.auth.mode) }}
{{- end }}
{{- if and $v.tls.certManager.enabled (not $v.tls.certManager.issuerRef.name) }}
{{- fail "tls.certManager.enabled needs tls.certManager.issuerRef.name (an Issuer or ClusterIssuer that puts ca.crt in the Secret)" }}
{{- end }}
{{- if and $v.tls.crl.existingSecret $v.tls.crl.existingConfigMap }}
{{- fail "set either tls.crl.existingSecret or tls.crl.existingConfigMap, not both" }}
{{- end }}
{{- if and (include "peermirror.crlEnabled" .) (not (include "peermirror.tlsEnabled" .)) }}
{{- fail "a CRL (tls.crl.*) needs TLS: set tls.existingSecret, tls.certManager.enabled or tls.generate.enabled" }}
{{- end }}
{{- if and $v.networkPolicy.enabled (not $v.networkPolicy.nodeCIDRs) }}
{{- fail "networkPolicy.enabled needs networkPolicy.nodeCIDRs: the CIDRs of the cluster's nodes (containerd and the peers connect from them)" }}
{{- end }}
{{- if and $v.serviceMonitor.enabled (not $v.metricsService.enabled) }}
{{- fail "serviceMonitor.enabled needs metricsService.enabled=true" }}
{{- end }}
{{- if and (include "peermirror.tlsEnabled" .) (contains "$(NODE_IP)" $v.containerd.mirrorHost) }}
{{- fail "containerd.mirrorHost $(NODE_IP) with TLS needs a certificate for every node IP, which the shared certificate cannot hold: keep 127.0.0.1 (use hostNetwork=true if your CNI does not forward hostPorts on loopback)" }}
{{- end }}
{{- $ports := list (int $v.ports.registry) (int $v.ports.router) (int $v.ports.metrics) }}
{{- if ne (len ($ports | uniq)) 3 }}
{{- fail "ports.registry, ports.router and ports.metrics must differ" }}
{{- end }}
{{- end }}

{{/* Where the directory of containerd.configFile is mounted (read-only) in the pod. */}}
{{- define "peermirror.containerdConfigDir" -}}
{{- printf "/host%s" (dir .Values.containerd.configFile) -}}
{{- end -}}

{{/* containerd.configFile as the pod sees it. */}}
{{- define "peermirror.containerdConfigFile" -}}
{{- printf "%s/%s" (include "peermirror.containerdConfigDir" .) (base .Values.containerd.configFile) -}}
{{- end -}}
