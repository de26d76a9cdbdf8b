{{/* Names, labels, images and security contexts shared by every template. */}}

{{- define "edgemodel.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* RELEASE-edgemodel, or RELEASE when it already contains the chart name; 40 characters at most so
that suffixed names (-signing-public, -agent-own-edgeagent) stay within 63. */}}
{{- define "edgemodel.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "edgemodel.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object; call with (dict "ctx" $ "component" "operator"). */}}
{{- define "edgemodel.labels" -}}
helm.sh/chart: {{ include "edgemodel.chart" .ctx }}
{{ include "edgemodel.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: edgemodel
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels (immutable in Deployments/DaemonSets): name, instance and component. */}}
{{- define "edgemodel.selectorLabels" -}}
app.kubernetes.io/name: {{ include "edgemodel.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* image reference; call with (dict "ctx" $ "image" .Values.operator.image). */}}
{{- define "edgemodel.image" -}}
{{- $tag := default .ctx.Chart.AppVersion .image.tag -}}
{{- with .image.variant }}{{ $tag = printf "%s-%s" $tag . }}{{ end -}}
{{- if .image.digest -}}
{{- printf "%s:%s@%s" .image.repository $tag .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "edgemodel.operatorServiceAccount" -}}
{{- printf "%s-operator" (include "edgemodel.fullname" .) -}}
{{- end -}}
{{- define "edgemodel.agentServiceAccount" -}}
{{- printf "%s-agent" (include "edgemodel.fullname" .) -}}
{{- end -}}

{{/* Secret holding the ed25519 private key (key private.pem). */}}
{{- define "edgemodel.signingSecret" -}}
{{- default (printf "%s-signing" (include "edgemodel.fullname" .)) .Values.signing.existingSecret -}}
{{- end -}}
{{/* ConfigMap holding the ed25519 public key (key public.pem). */}}
{{- define "edgemodel.publicKeyConfigMap" -}}
{{- default (printf "%s-signing-public" (include "edgemodel.fullname" .)) .Values.signing.existingPublicKeyConfigMap -}}
{{- end -}}
{{/* Secret holding the store upload token (key token); empty when uploads need no token. */}}
{{- define "edgemodel.storeTokenSecret" -}}
{{- if .Values.store.token.enabled -}}
{{- default (printf "%s-store-token" (include "edgemodel.fullname" .)) .Values.store.token.existingSecret -}}
{{- end -}}
{{- end -}}

{{/* In-cluster URL of the artifact store. */}}
{{- define "edgemodel.storeUrl" -}}
{{- if .Values.store.enabled -}}
{{- printf "http://%s-store.%s.svc:%d" (include "edgemodel.fullname" .) .Release.Namespace (int .Values.store.port) -}}
{{- else -}}
{{- required "store.externalUrl is required when store.enabled is false: set it to your artifact store's URL, e.g. https://artifacts.example.com" .Values.store.externalUrl -}}
{{- end -}}
{{- end -}}

{{/* Namespaces that need the signing Secret and store token (conversion Jobs run in the EdgeModel's namespace). */}}
{{- define "edgemodel.jobNamespaces" -}}
{{- $out := list .Release.Namespace -}}
{{- range .Values.operator.watchNamespaces -}}
{{- $out = append $out . -}}
{{- end -}}
{{- $out | uniq | toJson -}}
{{- end -}}

{{/* Pod-level securityContext (restricted). */}}
{{- define "edgemodel.podSecurityContext" -}}
{{- toYaml .Values.podSecurityContext -}}
{{- end -}}
{{/* Container-level securityContext (restricted). */}}
{{- define "edgemodel.containerSecurityContext" -}}
{{- toYaml .Values.containerSecurityContext -}}
{{- end -}}

{{- define "edgemodel.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* prometheus.io annotations, unless a ServiceMonitor/PodMonitor covers the pods. Call with (dict "ctx" $ "port" 8080). */}}
{{- define "edgemodel.scrapeAnnotations" -}}
{{- $m := .ctx.Values.metrics -}}
{{- if and $m.annotations (not $m.serviceMonitor.enabled) (not $m.podMonitor.enabled) -}}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- end -}}
{{- end -}}

{{/* Fail early on contradictory values. */}}
{{- define "edgemodel.validate" -}}
{{- if and .Values.store.enabled .Values.store.externalUrl -}}
{{- fail "store.externalUrl is set while store.enabled is true: set store.enabled=false to use the external store, or clear store.externalUrl" -}}
{{- end -}}
{{- if and .Values.signing.generate (or .Values.signing.privateKey .Values.signing.publicKey) -}}
{{- fail "signing.generate is true but signing.privateKey/publicKey are set: set signing.generate=false to use your keys" -}}
{{- end -}}
{{- if and .Values.signing.generate (or .Values.signing.existingSecret .Values.signing.existingPublicKeyConfigMap) -}}
{{- fail "signing.generate is true but signing.existingSecret/existingPublicKeyConfigMap are set: set signing.generate=false to bring your own" -}}
{{- end -}}
{{- if and (not .Values.signing.generate) (not .Values.signing.existingSecret) (not .Values.signing.privateKey) -}}
{{- fail "signing: no private key. Set signing.generate=true, or signing.privateKey and signing.publicKey (PEM, e.g. --set-file), or signing.existingSecret and signing.existingPublicKeyConfigMap" -}}
{{- end -}}
{{- if and (not .Values.signing.generate) (not .Values.signing.existingPublicKeyConfigMap) (not .Values.signing.publicKey) -}}
{{- fail "signing: no public key for the agents. Set signing.publicKey (PEM) or signing.existingPublicKeyConfigMap" -}}
{{- end -}}
{{- if and .Values.signing.privateKey (not (contains "PRIVATE KEY" .Values.signing.privateKey)) -}}
{{- fail "signing.privateKey must be a PEM private key (-----BEGIN PRIVATE KEY-----); pass the file with --set-file signing.privateKey=private.pem" -}}
{{- end -}}
{{- if and .Values.signing.publicKey (not (contains "PUBLIC KEY" .Values.signing.publicKey)) -}}
{{- fail "signing.publicKey must be a PEM public key (-----BEGIN PUBLIC KEY-----); pass the file with --set-file signing.publicKey=public.pem" -}}
{{- end -}}
{{- if and .Values.agent.cache.type (eq .Values.agent.cache.type "hostPath") (not .Values.agent.cache.hostPath) -}}
{{- fail "agent.cache.hostPath must be a node directory when agent.cache.type is hostPath, e.g. /var/lib/edgemodel-agent" -}}
{{- end -}}
{{- end -}}

{{/* metadata added to every CRD: the keep annotation and the chart's labels (without name/part-of,
which the generated CRDs already carry). */}}
{{- define "edgemodel.crdLabelLines" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ include "edgemodel.chart" . }}
{{- end -}}
{{- define "edgemodel.crdMetadataBody" -}}
{{- if .Values.crds.keep }}
annotations:
  helm.sh/resource-policy: keep
{{- end }}
labels:
  app.kubernetes.io/name: {{ include "edgemodel.name" . }}
  app.kubernetes.io/part-of: edgemodel
{{ include "edgemodel.crdLabelLines" . | indent 2 }}
{{- end -}}
{{- define "edgemodel.crdAnnotations" -}}
metadata:
{{ if .Values.crds.keep }}  annotations:
    helm.sh/resource-policy: keep
{{ end -}}
{{- end -}}
{{- define "edgemodel.crdLabels" -}}
{{- printf "  labels:\n%s\n" (include "edgemodel.crdLabelLines" . | indent 4) -}}
{{- end -}}

{{/* Operator settings as EDGEMODEL_OPERATOR_* variables (edgemodel_operator.settings.OperatorSettings);
tests/helm checks every name against that class. */}}
{{- define "edgemodel.operatorEnv" -}}
{{- $c := .Values.operator.converter -}}
- name: EDGEMODEL_OPERATOR_STORE_URL
  value: {{ include "edgemodel.storeUrl" . | quote }}
{{- with .Values.store.agentUrl }}
- name: EDGEMODEL_OPERATOR_ARTIFACT_BASE_URL
  value: {{ . | quote }}
{{- end }}
{{- with include "edgemodel.storeTokenSecret" . }}
- name: EDGEMODEL_OPERATOR_STORE_TOKEN_SECRET
  value: {{ . | quote }}
{{- end }}
- name: EDGEMODEL_OPERATOR_SIGNING_KEY_SECRET
  value: {{ include "edgemodel.signingSecret" . | quote }}
- name: EDGEMODEL_OPERATOR_CONVERTER_IMAGE
  value: {{ include "edgemodel.image" (dict "ctx" . "image" $c.image) | quote }}
- name: EDGEMODEL_OPERATOR_CONVERTER_IMAGE_PULL_POLICY
  value: {{ $c.image.pullPolicy | quote }}
- name: EDGEMODEL_OPERATOR_CONVERTER_CPU_REQUEST
  value: {{ $c.resources.requests.cpu | quote }}
- name: EDGEMODEL_OPERATOR_CONVERTER_CPU_LIMIT
  value: {{ $c.resources.limits.cpu | quote }}
- name: EDGEMODEL_OPERATOR_CONVERTER_MEMORY_REQUEST
  value: {{ $c.resources.requests.memory | quote }}
- name: EDGEMODEL_OPERATOR_CONVERTER_MEMORY_LIMIT
  value: {{ $c.resources.limits.memory | quote }}
{{- $psc := .Values.podSecurityContext }}
- name: EDGEMODEL_OPERATOR_CONVERTER_RUN_AS_USER
  value: {{ $psc.runAsUser | default 10001 | quote }}
- name: EDGEMODEL_OPERATOR_CONVERTER_RUN_AS_GROUP
  value: {{ $psc.runAsGroup | default 10001 | quote }}
- name: EDGEMODEL_OPERATOR_CONVERTER_FS_GROUP
  value: {{ $psc.fsGroup | default 10001 | quote }}
- name: EDGEMODEL_OPERATOR_CONVERTER_BACKOFF_LIMIT
  value: {{ $c.backoffLimit | quote }}
- name: EDGEMODEL_OPERATOR_CONVERTER_DEADLINE_SECONDS
  value: {{ $c.deadlineSeconds | quote }}
{{- with .Values.operator.prometheusUrl }}
- name: EDGEMODEL_OPERATOR_PROMETHEUS_URL
  value: {{ . | quote }}
{{- end }}
- name: EDGEMODEL_OPERATOR_NAMESPACES
  value: {{ .Values.operator.watchNamespaces | toJson | quote }}
- name: EDGEMODEL_OPERATOR_HEARTBEAT_TIMEOUT_SECONDS
  value: {{ .Values.operator.heartbeatTimeoutSeconds | quote }}
- name: EDGEMODEL_OPERATOR_LEASE_NAMESPACE
  value: {{ .Release.Namespace | quote }}
- name: EDGEMODEL_OPERATOR_RESYNC_SECONDS
  value: {{ .Values.operator.resyncSeconds | quote }}
- name: EDGEMODEL_OPERATOR_HISTORY_LIMIT
  value: {{ .Values.operator.historyLimit | quote }}
- name: EDGEMODEL_OPERATOR_METRICS_PORT
  value: {{ .Values.operator.metricsPort | quote }}
- name: EDGEMODEL_OPERATOR_LIVENESS_PORT
  value: {{ .Values.operator.livenessPort | quote }}
- name: EDGEMODEL_OPERATOR_BIND_ADDRESS
  value: "0.0.0.0"
- name: EDGEMODEL_OPERATOR_PEERING
  value: {{ .Values.operator.peering.name | quote }}
- name: EDGEMODEL_OPERATOR_PEERING_LIFETIME_SECONDS
  value: {{ .Values.operator.peering.lifetimeSeconds | quote }}
{{- end -}}

{{/* RBAC rules from files/rbac.yaml (the one permissions table). Call with
(dict "ctx" $ "who" "operator" "scopes" (list "cluster")). */}}
{{- define "edgemodel.rbacRules" -}}
{{- $table := .ctx.Files.Get "files/rbac.yaml" | fromYaml -}}
{{- $scopes := .scopes -}}
{{- range (index $table .who) }}
{{- if has .scope $scopes }}
- apiGroups: {{ toJson .apiGroups }}
  resources: {{ toJson .resources }}
  verbs: {{ toJson .verbs }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Arguments of `edgemodel store` (edgemodel/cli/store.py). */}}
{{- define "edgemodel.storeArgs" -}}
- store
- --root
- /data
- --host
- 0.0.0.0
- --port
- {{ .Values.store.port | quote }}
- --max-upload-bytes
- {{ .Values.store.maxUploadBytes | int64 | quote }}
{{- if include "edgemodel.storeTokenSecret" . }}
- --token-file
- /var/run/edgemodel/store-token/token
{{- end }}
{{- end -}}

{{/* Pod template of an agent (the edge DaemonSet and the cloud Deployment). Call with
(dict "ctx" $ "component" "agent" "agent" <agent values> "labels" <EdgeAgent labels> ["cacheType" override]).
Settings are EDGEMODEL_AGENT_* variables (edge_agent.settings.AgentSettings; tests/helm checks the names). */}}
{{/* Secret with the store's write token for the capture uploads (empty: uploads off or a store without a token). */}}
{{- define "edgemodel.captureUploadTokenSecret" -}}
{{- $c := .agent.continual -}}
{{- if and $c.capture.enabled $c.upload.enabled -}}
{{- include "edgemodel.storeTokenSecret" .ctx -}}
{{- end -}}
{{- end -}}

{{/* EDGEMODEL_AGENT_CONTINUAL_* (edge_agent.capture_worker.ContinualSettings) and the store token file of
the capture uploads; tests/helm checks every name against those classes. */}}
{{- define "edgemodel.agentContinualEnv" -}}
{{- $ctx := .ctx -}}
{{- $c := .agent.continual -}}
{{- if and $c.upload.enabled (not $c.capture.enabled) -}}
{{- fail "agent.continual.upload.enabled needs agent.continual.capture.enabled: true (only captured samples are uploaded)" -}}
{{- end -}}
- name: EDGEMODEL_AGENT_CONTINUAL_ENABLED
  value: {{ $c.enabled | quote }}
- name: EDGEMODEL_AGENT_CONTINUAL_PSI_WINDOW
  value: {{ $c.drift.psiWindow | int64 | quote }}
- name: EDGEMODEL_AGENT_CONTINUAL_PSI_THRESHOLD
  value: {{ $c.drift.psiThreshold | quote }}
- name: EDGEMODEL_AGENT_CONTINUAL_PH_DELTA
  value: {{ $c.drift.phDelta | quote }}
- name: EDGEMODEL_AGENT_CONTINUAL_PH_THRESHOLD
  value: {{ $c.drift.phThreshold | quote }}
- name: EDGEMODEL_AGENT_CONTINUAL_REFERENCE_SAMPLES
  value: {{ $c.drift.referenceSamples | int64 | quote }}
{{- if $c.capture.enabled }}
- name: EDGEMODEL_AGENT_CONTINUAL_CAPTURE_DIR
  value: /var/lib/edgemodel-captures
- name: EDGEMODEL_AGENT_CONTINUAL_MAX_BYTES
  value: {{ $c.capture.maxBytes | int64 | quote }}
- name: EDGEMODEL_AGENT_CONTINUAL_MAX_RECORDS
  value: {{ $c.capture.maxRecords | int64 | quote }}
- name: EDGEMODEL_AGENT_CONTINUAL_LOW_CONFIDENCE
  value: {{ $c.capture.lowConfidence | quote }}
- name: EDGEMODEL_AGENT_CONTINUAL_HIGH_ENTROPY
  value: {{ $c.capture.highEntropy | quote }}
- name: EDGEMODEL_AGENT_CONTINUAL_RANDOM_RATE
  value: {{ $c.capture.randomRate | quote }}
- name: EDGEMODEL_AGENT_CONTINUAL_MAX_CAPTURES_PER_S
  value: {{ $c.capture.maxCapturesPerSecond | quote }}
{{- if $c.upload.enabled }}
- name: EDGEMODEL_AGENT_CONTINUAL_STORE_URL
  value: {{ $ctx.Values.store.agentUrl | default (include "edgemodel.storeUrl" $ctx) | quote }}
- name: EDGEMODEL_AGENT_CONTINUAL_UPLOAD_INTERVAL_S
  value: {{ $c.upload.intervalSeconds | quote }}
{{- if include "edgemodel.captureUploadTokenSecret" . }}
- name: EDGEMODEL_AGENT_STORE_TOKEN_FILE
  value: /var/run/edgemodel/store-token/token
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "edgemodel.agentPodTemplate" -}}
{{- $ctx := .ctx -}}
{{- $a := .agent -}}
{{- $cacheType := default $a.cache.type .cacheType -}}
{{- $cont := $a.continual -}}
{{- $uploadToken := include "edgemodel.captureUploadTokenSecret" (dict "ctx" $ctx "agent" $a) -}}
metadata:
  labels:
    {{- include "edgemodel.labels" (dict "ctx" $ctx "component" .component) | nindent 4 }}
  {{- with include "edgemodel.podAnnotations" (dict "ctx" $ctx "port" $a.port "extra" $a.podAnnotations) }}
  annotations:
    {{- . | nindent 4 }}
  {{- end }}
spec:
  serviceAccountName: {{ include "edgemodel.agentServiceAccount" $ctx }}
  automountServiceAccountToken: true
  {{- include "edgemodel.imagePullSecrets" $ctx | nindent 2 }}
  securityContext:
    {{- include "edgemodel.podSecurityContext" $ctx | nindent 4 }}
  {{- with $a.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with $a.runtimeClassName }}
  runtimeClassName: {{ . }}
  {{- end }}
  # Serving in-flight requests is finished by the agent before it exits (drain).
  terminationGracePeriodSeconds: 45
  containers:
    - name: agent
      image: {{ include "edgemodel.image" (dict "ctx" $ctx "image" $a.image) }}
      imagePullPolicy: {{ $a.image.pullPolicy }}
      args: [agent, --in-cluster]
      env:
        - name: NODE_NAME
          valueFrom:
            fieldRef:
              fieldPath: spec.nodeName
        - name: POD_IP
          valueFrom:
            fieldRef:
              fieldPath: status.podIP
        - name: EDGEMODEL_AGENT_HOST
          value: "0.0.0.0"
        - name: EDGEMODEL_AGENT_PORT
          value: {{ $a.port | quote }}
        {{- if $a.grpcPort }}
        - name: EDGEMODEL_AGENT_GRPC_PORT
          value: {{ $a.grpcPort | quote }}
        {{- end }}
        - name: EDGEMODEL_AGENT_PUBLIC_KEY
          value: /etc/edgemodel/signing/public.pem
        - name: EDGEMODEL_AGENT_CACHE_DIR
          value: /var/lib/edgemodel-agent
        - name: EDGEMODEL_AGENT_CACHE_MAX_BYTES
          value: {{ $a.cache.maxBytes | int64 | quote }}
        - name: EDGEMODEL_AGENT_HEARTBEAT_INTERVAL_S
          value: {{ $a.heartbeatIntervalSeconds | quote }}
        - name: EDGEMODEL_AGENT_MAX_BODY_BYTES
          value: {{ $a.limits.maxBodyBytes | int64 | quote }}
        - name: EDGEMODEL_AGENT_MAX_DECOMPRESSED_BYTES
          value: {{ $a.limits.maxDecompressedBytes | int64 | quote }}
        - name: EDGEMODEL_AGENT_MAX_JSON_BYTES
          value: {{ $a.limits.maxJsonBytes | int64 | quote }}
        - name: EDGEMODEL_AGENT_MAX_ELEMENTS
          value: {{ $a.limits.maxElements | int64 | quote }}
        - name: EDGEMODEL_AGENT_BODY_READ_TIMEOUT_S
          value: {{ $a.limits.bodyReadTimeoutSeconds | quote }}
        - name: EDGEMODEL_AGENT_LEASE_NAMESPACE
          value: {{ $ctx.Release.Namespace | quote }}
        - name: EDGEMODEL_AGENT_STATS_INTERVAL_S
          value: {{ $a.statsIntervalSeconds | default 10 | quote }}
        {{- with .labels }}
        - name: EDGEMODEL_AGENT_LABELS
          value: {{ toJson . | quote }}
        {{- end }}
        {{- if $a.tokenSecret }}
        - name: EDGEMODEL_AGENT_TOKEN_FILE
          value: /var/run/edgemodel/agent-token/token
        {{- end }}
        {{- if $a.splitPort }}
        - name: EDGEMODEL_AGENT_SPLIT_PORT
          value: {{ $a.splitPort | quote }}
        {{- end }}
        {{- if $a.splitTlsSecret }}
        - name: EDGEMODEL_AGENT_SPLIT_TLS_CA
          value: /etc/edgemodel/split-tls/ca.crt
        - name: EDGEMODEL_AGENT_SPLIT_TLS_CERT
          value: /etc/edgemodel/split-tls/tls.crt
        - name: EDGEMODEL_AGENT_SPLIT_TLS_KEY
          value: /etc/edgemodel/split-tls/tls.key
        {{- end }}
        {{- include "edgemodel.agentContinualEnv" (dict "ctx" $ctx "agent" $a) | nindent 8 }}
        {{- with $a.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      ports:
        - name: http
          containerPort: {{ $a.port }}
          protocol: TCP
        {{- if $a.grpcPort }}
        - name: grpc
          containerPort: {{ $a.grpcPort }}
          protocol: TCP
        {{- end }}
        {{- if $a.splitPort }}
        - name: split
          containerPort: {{ $a.splitPort }}
          protocol: TCP
        {{- end }}
      startupProbe:
        httpGet:
          path: /v2/health/live
          port: http
        periodSeconds: 2
        failureThreshold: 60
      livenessProbe:
        httpGet:
          path: /v2/health/live
          port: http
        periodSeconds: 15
        timeoutSeconds: 5
        failureThreshold: 4
      readinessProbe:
        httpGet:
          path: /v2/health/ready
          port: http
        periodSeconds: 5
        timeoutSeconds: 3
      resources:
        {{- toYaml $a.resources | nindent 8 }}
      securityContext:
        {{- include "edgemodel.containerSecurityContext" $ctx | nindent 8 }}
      volumeMounts:
        - name: cache
          mountPath: /var/lib/edgemodel-agent
        - name: tmp
          mountPath: /tmp
        - name: public-key
          mountPath: /etc/edgemodel/signing
          readOnly: true
        {{- if $a.tokenSecret }}
        - name: token
          mountPath: /var/run/edgemodel/agent-token
          readOnly: true
        {{- end }}
        {{- if $a.splitTlsSecret }}
        - name: split-tls
          mountPath: /etc/edgemodel/split-tls
          readOnly: true
        {{- end }}
        {{- if $cont.capture.enabled }}
        - name: captures
          mountPath: /var/lib/edgemodel-captures
        {{- end }}
        {{- if $uploadToken }}
        - name: capture-store-token
          mountPath: /var/run/edgemodel/store-token
          readOnly: true
        {{- end }}
  volumes:
    {{- if $cont.capture.enabled }}
    - name: captures
      {{- if $cont.capture.hostPath }}
      hostPath:
        path: {{ $cont.capture.hostPath }}
        type: DirectoryOrCreate
      {{- else }}
      emptyDir:
        sizeLimit: {{ $cont.capture.sizeLimit }}
      {{- end }}
    {{- end }}
    {{- if $uploadToken }}
    - name: capture-store-token
      secret:
        secretName: {{ $uploadToken }}
    {{- end }}
    - name: cache
      {{- if eq $cacheType "hostPath" }}
      hostPath:
        path: {{ $a.cache.hostPath }}
        type: DirectoryOrCreate
      {{- else if eq $cacheType "ephemeral" }}
      ephemeral:
        volumeClaimTemplate:
          metadata:
            labels:
              {{- include "edgemodel.selectorLabels" (dict "ctx" $ctx "component" .component) | nindent 14 }}
          spec:
            accessModes: [ReadWriteOnce]
            {{- with $a.cache.ephemeral.storageClassName }}
            storageClassName: {{ . }}
            {{- end }}
            resources:
              requests:
                storage: {{ $a.cache.ephemeral.size }}
      {{- else }}
      emptyDir:
        sizeLimit: {{ $a.cache.sizeLimit }}
      {{- end }}
    - name: tmp
      emptyDir:
        sizeLimit: 256Mi
    - name: public-key
      configMap:
        name: {{ include "edgemodel.publicKeyConfigMap" $ctx }}
        items:
          - key: public.pem
            path: public.pem
    {{- if $a.tokenSecret }}
    - name: token
      secret:
        secretName: {{ $a.tokenSecret }}
        items:
          - key: token
            path: token
    {{- end }}
    {{- if $a.splitTlsSecret }}
    - name: split-tls
      secret:
        secretName: {{ $a.splitTlsSecret }}
        items:
          - key: ca.crt
            path: ca.crt
          - key: tls.crt
            path: tls.crt
          - key: tls.key
            path: tls.key
    {{- end }}
  {{- with $a.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $a.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if eq .component "cloud-agent" }}
  affinity:
    {{- with $ctx.Values.agent.nodeSelector }}
    # Never on an edge node: its DaemonSet agent already owns the EdgeAgent named after the node.
    nodeAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
        nodeSelectorTerms:
          - matchExpressions:
              {{- range $k, $v := . }}
              - key: {{ $k }}
                operator: NotIn
                values: [{{ $v | quote }}]
              {{- end }}
    {{- end }}
    # One cloud agent per node: the EdgeAgent is named after the node.
    podAntiAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
        - topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "edgemodel.selectorLabels" (dict "ctx" $ctx "component" .component) | nindent 14 }}
  {{- else }}
  {{- with $a.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- end }}
{{- end -}}

{{/* Labels the operator puts on conversion Job pods (edgemodel_operator; checked by tests/helm). */}}
{{- define "edgemodel.converterPodLabels" -}}
app.kubernetes.io/managed-by: edgemodel-operator
app.kubernetes.io/component: converter
{{- end -}}

{{/* Target labels the dashboards and alerts rely on: node (the pod's node), pod, namespace is
set by the Prometheus Operator. */}}
{{- define "edgemodel.monitorRelabelings" -}}
- sourceLabels: [__meta_kubernetes_pod_node_name]
  targetLabel: node
- sourceLabels: [__meta_kubernetes_pod_label_app_kubernetes_io_component]
  targetLabel: component
{{- end -}}

{{/* Pod annotations: scrape annotations plus the user's; empty when there are none. */}}
{{- define "edgemodel.podAnnotations" -}}
{{- $out := include "edgemodel.scrapeAnnotations" (dict "ctx" .ctx "port" .port) | fromYaml | default dict -}}
{{- $out = merge (deepCopy (.extra | default dict)) $out -}}
{{- if $out }}{{ toYaml $out }}{{ end -}}
{{- end -}}
