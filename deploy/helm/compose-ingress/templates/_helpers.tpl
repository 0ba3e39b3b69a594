{{/*
The labels Helm's conventions put on every object of a release (metadata only: selectors and the
pod template keep deploy/'s app.kubernetes.io/name, so that an install and an apply of deploy/
select the same pods). tests/e2e/helm.rs ignores exactly these when it compares with deploy/.
*/}}
{{- define "compose-ingress.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | quote }}
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service | quote }}
{{- end }}

{{- define "compose-ingress.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "compose-ingress.podScope" -}}
{{- if eq .Values.routeScope "pod" }}true{{ end }}
{{- end }}

{{/* Fails the render with what is wrong and the fix: a bad value never reaches a pod. */}}
{{- define "compose-ingress.validate" -}}
{{- if not (has .Values.mode (list "statefulset" "sidecar-only")) }}
{{- fail (printf "mode is %q: use statefulset or sidecar-only" .Values.mode) }}
{{- end }}
{{- if not (has .Values.routeApi (list "ingress" "gateway")) }}
{{- fail (printf "routeApi is %q: use ingress or gateway" .Values.routeApi) }}
{{- end }}
{{- if not (has .Values.routeScope (list "composition" "pod")) }}
{{- fail (printf "routeScope is %q: use composition or pod" .Values.routeScope) }}
{{- end }}
{{- if not .Values.domain }}
{{- fail "domain is empty: set the domain your wildcard DNS record covers, e.g. --set domain=composition.example.com" }}
{{- end }}
{{- if and (eq .Values.routeApi "gateway") (not .Values.gateway.create) (not .Values.gateway.ref) }}
{{- fail "routeApi is gateway but there is no Gateway: set gateway.create=true or gateway.ref=[namespace/]name[:sectionName]" }}
{{- end }}
{{- if and .Values.rateLimit.mode (not (has .Values.rateLimit.mode (list "annotation" "traefik-middleware"))) }}
{{- fail (printf "rateLimit.mode is %q: use traefik-middleware or annotation" .Values.rateLimit.mode) }}
{{- end }}
{{- if and .Values.accessPolicies.file .Values.accessPolicies.existingConfigMap }}
{{- fail "accessPolicies: set file or existingConfigMap, not both" }}
{{- end }}
{{- end }}

{{/* The Gateway the HTTPRoutes attach to, as --gateway takes it. */}}
{{- define "compose-ingress.gatewayRef" -}}
{{- if .Values.gateway.create -}}
{{ .Values.gateway.name }}:{{ .Values.gateway.listener.name }}
{{- else -}}
{{ .Values.gateway.ref }}
{{- end }}
{{- end }}

{{- define "compose-ingress.policiesConfigMap" -}}
{{- if .Values.accessPolicies.file }}compose-ingress-access-policies{{ else }}{{ .Values.accessPolicies.existingConfigMap }}{{ end }}
{{- end }}

{{/*
The sidecar's settings as environment variables (docs/configuration.md): only what is set, so
that the flags' own defaults apply to the rest.
*/}}
{{- define "compose-ingress.settingsEnv" -}}
{{- $pod := include "compose-ingress.podScope" . -}}
- name: COMPOSE_INGRESS_DOMAIN
  value: {{ .Values.domain | quote }}
- name: COMPOSE_INGRESS_LISTEN
  value: {{ printf "0.0.0.0:%v" .Values.sidecar.port | quote }}
{{- if eq .Values.routeApi "gateway" }}
- name: COMPOSE_INGRESS_ROUTE_API
  value: gateway
- name: COMPOSE_INGRESS_GATEWAY
  value: {{ include "compose-ingress.gatewayRef" . | quote }}
{{- else }}
{{- with .Values.ingressClass }}
- name: COMPOSE_INGRESS_INGRESS_CLASS
  value: {{ . | quote }}
{{- end }}
{{- with .Values.tlsSecret }}
- name: COMPOSE_INGRESS_TLS_SECRET
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- with .Values.allowedClasses }}
- name: COMPOSE_INGRESS_ALLOWED_CLASSES
  value: {{ join "," . | quote }}
{{- end }}
{{- with .Values.allowedTlsSecrets }}
- name: COMPOSE_INGRESS_ALLOWED_TLS_SECRETS
  value: {{ join "," . | quote }}
{{- end }}
{{- if not (kindIs "invalid" .Values.rateLimit.defaultRps) }}
- name: COMPOSE_INGRESS_DEFAULT_RPS
  value: {{ .Values.rateLimit.defaultRps | toString | quote }}
{{- end }}
{{- if not (kindIs "invalid" .Values.rateLimit.maxRps) }}
- name: COMPOSE_INGRESS_MAX_RPS
  value: {{ .Values.rateLimit.maxRps | toString | quote }}
{{- end }}
{{- if $pod }}
- name: COMPOSE_INGRESS_ROUTE_SCOPE
  value: pod
- name: COMPOSE_INGRESS_PROXY_LISTEN
  value: {{ printf "0.0.0.0:%v" .Values.podScope.proxyPort | quote }}
{{- with .Values.podScope.trustedProxies }}
- name: COMPOSE_INGRESS_TRUSTED_PROXIES
  value: {{ join "," . | quote }}
{{- end }}
{{- else }}
{{- with .Values.rateLimit.mode }}
- name: COMPOSE_INGRESS_RATE_LIMIT_MODE
  value: {{ . | quote }}
{{- end }}
{{- with .Values.rateLimit.annotation }}
- name: COMPOSE_INGRESS_RATE_LIMIT_ANNOTATION
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- if include "compose-ingress.policiesConfigMap" . }}
- name: COMPOSE_INGRESS_ACCESS_POLICIES
  value: /etc/compose-ingress/policies.yaml
{{- end }}
{{- with .Values.probeUrl }}
- name: COMPOSE_INGRESS_PROBE_URL
  value: {{ . | quote }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The sidecar container, the same in the StatefulSet and in the sidecar-only snippets: a native
sidecar (an init container with restartPolicy: Always) that starts before dind and stops after
it. Call with (dict "root" $ "dockerHost" URL "socketVolume" NAME): socketVolume empty for a
Docker daemon over TCP.
*/}}
{{- define "compose-ingress.sidecarContainer" -}}
{{- $v := .root.Values -}}
name: compose-ingress
image: {{ include "compose-ingress.image" .root | quote }}
{{- with $v.image.pullPolicy }}
imagePullPolicy: {{ . }}
{{- end }}
restartPolicy: Always
env:
- name: POD_NAME
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
- name: POD_NAMESPACE
  valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
- name: POD_UID
  valueFrom: {fieldRef: {fieldPath: metadata.uid}}
# Ports published on exactly the pod's address count too.
- name: POD_IP
  valueFrom: {fieldRef: {fieldPath: status.podIP}}
# The node's address keeps HTTP connection slots of its own on the metrics port (node-local
# scrapers); the kubelet's probes use the probe socket below.
- name: HOST_IP
  valueFrom: {fieldRef: {fieldPath: status.hostIP}}
# /healthz and /readyz on a unix socket in an emptyDir only this container mounts: the exec
# probes ask there, so no CI job can starve them, whatever the CNI.
- name: COMPOSE_INGRESS_PROBE_SOCKET
  value: /run/compose-ingress/probe.sock
- name: DOCKER_HOST
  value: {{ .dockerHost | quote }}
{{ include "compose-ingress.settingsEnv" .root }}
ports:
- name: metrics
  containerPort: {{ $v.sidecar.port }}
{{- if include "compose-ingress.podScope" .root }}
- name: proxy
  containerPort: {{ $v.podScope.proxyPort }}
{{- end }}
livenessProbe:
  exec: {command: [/compose-ingress, probe, healthz]}
  initialDelaySeconds: 5
  periodSeconds: 10
  timeoutSeconds: 2
  failureThreshold: 3
readinessProbe:
  exec: {command: [/compose-ingress, probe, readyz]}
  periodSeconds: 5
  timeoutSeconds: 2
  failureThreshold: 3
resources:
  {{- toYaml $v.sidecar.resources | nindent 2 }}
securityContext:
  runAsNonRoot: true
  runAsUser: 65532
  runAsGroup: 65532
  readOnlyRootFilesystem: true
  allowPrivilegeEscalation: false
  privileged: false
  capabilities: {drop: [ALL]}
  seccompProfile: {type: RuntimeDefault}
volumeMounts:
{{- with .socketVolume }}
- name: {{ . }}
  mountPath: /var/run/dind
  readOnly: true
{{- end }}
- name: probe-socket
  mountPath: /run/compose-ingress
- name: kube-api-access
  mountPath: /var/run/secrets/kubernetes.io/serviceaccount
  readOnly: true
{{- if include "compose-ingress.policiesConfigMap" .root }}
- name: access-policies
  mountPath: /etc/compose-ingress
  readOnly: true
{{- end }}
{{- end }}

{{/*
The sidecar's volumes: its probe socket, its API credentials (what the kubelet would automount, as a projected
volume mounted in the sidecar only: no other container of the pod, and so no CI job, can read
the token) and the access-policy file.
*/}}
{{- define "compose-ingress.sidecarVolumes" -}}
# The sidecar's probe socket (mounted in the sidecar only, never in dind).
- name: probe-socket
  emptyDir: {medium: Memory, sizeLimit: 1Mi}
- name: kube-api-access
  projected:
    # 0444
    defaultMode: 292
    sources:
    - serviceAccountToken:
        path: token
        expirationSeconds: 3607
    - configMap:
        name: kube-root-ca.crt
        items: [{key: ca.crt, path: ca.crt}]
    - downwardAPI:
        items:
        - path: namespace
          fieldRef: {fieldPath: metadata.namespace}
{{- with include "compose-ingress.policiesConfigMap" . }}
- name: access-policies
  configMap: {name: {{ . }}}
{{- end }}
{{- end }}
