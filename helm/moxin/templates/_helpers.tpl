{{/*
A list of strings, each quoted (toYaml would drop the whole list, silently, for a string that Go's YAML
encoder cannot write, such as one holding a DEL or U+FFFE). Context: the list.
*/}}
{{- define "moxin.quotedList" -}}
{{- range . }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{/*
Labels every object carries: the Kubernetes recommended set plus the plan (moxin prunes by it).
*/}}
{{- define "moxin.labels" -}}
app.kubernetes.io/name: moxin
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/managed-by: {{ .Values.managedBy | default .Release.Service | quote }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | quote }}
moxin.dev/plan: {{ .Values.plan.name | quote }}
{{- end }}

{{/* The labels that select one assignment's pods (stable across upgrades). */}}
{{- define "moxin.assignmentSelector" -}}
app.kubernetes.io/name: moxin
app.kubernetes.io/instance: {{ .root.Release.Name | quote }}
app.kubernetes.io/component: engine
moxin.dev/assignment: {{ .a.id | quote }}
{{- end }}

{{/* Labels of an assignment's objects: common + selector + the assignment's own. */}}
{{- define "moxin.assignmentLabels" -}}
{{ include "moxin.labels" .root }}
app.kubernetes.io/component: engine
moxin.dev/assignment: {{ .a.id | quote }}
{{- with .a.labels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "moxin.routerSelector" -}}
app.kubernetes.io/name: moxin
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/component: router
{{- end }}

{{- /* "true" when the router pod runs a parent and workers (router.workers not 1): its /metrics, every worker's,
is then served on router.metricsPort instead of the http port. */ -}}
{{- define "moxin.routerWorkers" -}}
{{- if ne (toString .Values.router.workers) "1" }}true{{ end }}
{{- end }}

{{- define "moxin.routerName" -}}
{{ printf "%s-router" .Release.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "moxin.engineServiceAccount" -}}
{{ printf "%s-engine" .Release.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "moxin.routerImage" -}}
{{ printf "%s:%s" .Values.router.image.repository (.Values.router.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
Refuse a namespace other than the one the plan's router URLs name.
*/}}
{{- define "moxin.checkNamespace" -}}
{{- if and .Values.namespace (ne .Values.namespace .Release.Namespace) -}}
{{- fail (printf "these values were rendered for namespace %q (the router's URLs name it) but the release is in %q: install with -n %s, or re-render with moxin render helm --namespace %s" .Values.namespace .Release.Namespace .Values.namespace .Release.Namespace) -}}
{{- end -}}
{{- end }}

{{/*
Pod pieces shared by every pod moxin runs (engine Deployments and LeaderWorkerSets, KubeRay head and
worker pods, the `moxin apply` Job), so that a security, storage or placement change is made here once.
*/}}

{{/* Pod-level security (engine.podSecurityContext): non-root, seccomp RuntimeDefault. */}}
{{- define "moxin.podSecurityContext" -}}
{{- toYaml .Values.engine.podSecurityContext }}
{{- end }}

{{/* What every moxin pod sets: no API token (none calls the Kubernetes API), no service links, the
image pull secrets, the pod security context. Context: the root. */}}
{{- define "moxin.podBasics" -}}
automountServiceAccountToken: false
enableServiceLinks: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- include "moxin.podSecurityContext" . | nindent 2 }}
{{- end }}

{{/*
A container's securityContext: engine.securityContext (restricted: no privilege escalation, no
capabilities, read-only root), replaced by engine.securityOverrides[<device resource>] for a container
that holds that vendor's devices. writableRoot: for Ray nodes (Ray writes its session under /tmp and the
workers it spawns write caches under HOME, on the image's filesystem): everything but readOnlyRootFilesystem.
Context: dict "root" $ ["a" (an assignment or a Ray worker group)] ["writableRoot" true].
*/}}
{{- define "moxin.containerSecurityContext" -}}
{{- $context := .root.Values.engine.securityContext -}}
{{- if and .a .a.deviceResource -}}
{{- $override := get .root.Values.engine.securityOverrides .a.deviceResource | default dict -}}
{{- if gt (len $override) 0 -}}
{{- $context = $override -}}
{{- end -}}
{{- end -}}
{{- if .writableRoot -}}
{{- $context = omit $context "readOnlyRootFilesystem" -}}
{{- end -}}
{{- toYaml $context }}
{{- end }}

{{/*
Where a pod holding devices runs: the profile's runtime class, its node selector (with the pool's
labels), tolerations (the vendor resource's taint, then engine.tolerations), affinity.
Context: dict "root" $ "a" (an assignment or a Ray worker group).
*/}}
{{- define "moxin.devicePlacement" -}}
{{- with .a.runtimeClassName }}
runtimeClassName: {{ . | quote }}
{{- end }}
{{- with .a.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- $tolerations := concat (.a.tolerations | default list) .root.Values.engine.tolerations }}
{{- with $tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- $affinity := .a.affinity | default .root.Values.engine.affinity }}
{{- with $affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Shared memory (/dev/shm): the assignment's size, else engine.sharedMemorySize. Context: dict "root" "a". */}}
{{- define "moxin.sharedMemoryVolume" -}}
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .a.sharedMemorySize | default .root.Values.engine.sharedMemorySize | quote }}
{{- end }}

{{- define "moxin.sharedMemoryMount" -}}
- name: dshm
  mountPath: /dev/shm
{{- end }}

{{/* Model storage: the shared claim (modelStorage.type pvc), or an emptyDir an init container fills. Context: the root. */}}
{{- define "moxin.modelsVolume" -}}
{{- if eq .Values.modelStorage.type "pvc" -}}
- name: models
  persistentVolumeClaim:
    claimName: {{ .Values.modelStorage.pvc.claimName | quote }}
    readOnly: {{ .Values.modelStorage.pvc.readOnly | toYaml }}
{{- else -}}
- name: models
  emptyDir:
    sizeLimit: {{ .Values.modelStorage.objectStore.sizeLimit | quote }}
{{- end }}
{{- end }}

{{- define "moxin.modelsMount" -}}
- name: models
  mountPath: {{ .Values.modelStorage.mountPath | quote }}
{{- end }}

{{/*
Volumes of an engine pod: shared memory, scratch space for a read-only root filesystem, model storage.
*/}}
{{- define "moxin.engineVolumes" -}}
{{ include "moxin.sharedMemoryVolume" . }}
- name: tmp
  emptyDir: {}
- name: home
  emptyDir: {}
{{ include "moxin.modelsVolume" .root }}
{{- end }}

{{- define "moxin.engineMounts" -}}
{{ include "moxin.sharedMemoryMount" . }}
- name: tmp
  mountPath: /tmp
- name: home
  mountPath: /home/moxin
{{ include "moxin.modelsMount" .root }}
{{- end }}

{{/* Environment common to engine containers: the launch's env, HOME for a read-only root, the hub token. */}}
{{- define "moxin.engineEnv" -}}
- name: HOME
  value: /home/moxin
- name: XDG_CACHE_HOME
  value: /home/moxin/.cache
- name: HF_HOME
  value: {{ printf "%s/.cache/huggingface" .root.Values.modelStorage.mountPath | quote }}
{{- range $k, $v := .a.env }}
- name: {{ $k | quote }}
  value: {{ $v | quote }}
{{- end }}
{{- if .root.Values.hubToken.secretName }}
- name: HF_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ .root.Values.hubToken.secretName | quote }}
      key: {{ .root.Values.hubToken.key | quote }}
      optional: true
{{- end }}
{{- /* Last, so that it wins over a launch variable of the same name. */}}
{{- if and .root.Values.engineAuth.secretName .a.apiKeyEnv }}
- name: {{ .a.apiKeyEnv | quote }}
  valueFrom:
    secretKeyRef:
      name: {{ .root.Values.engineAuth.secretName | quote }}
      key: {{ .root.Values.engineAuth.key | quote }}
{{- end }}
{{- end }}

{{/* Container resources of a pod holding devices (an engine pod, or a Ray worker pod that runs engines):
the vendor's extended resource times the devices of this pod, host CPU/memory from engine.resources
(engine.emulatedResources for emulated pools). Context: dict "root" $ "a" (an assignment or a Ray worker group). */}}
{{- define "moxin.engineResources" -}}
{{- $base := ternary .root.Values.engine.emulatedResources .root.Values.engine.resources .a.emulated -}}
{{- $requests := deepCopy ($base.requests | default dict) -}}
{{- $limits := deepCopy ($base.limits | default dict) -}}
{{- if .a.deviceResource -}}
{{- $_ := set $requests .a.deviceResource (int .a.devicesPerPod) -}}
{{- $_ := set $limits .a.deviceResource (int .a.devicesPerPod) -}}
{{- end -}}
{{- with $requests }}
requests:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $limits }}
limits:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Scheduling of an engine pod: its ServiceAccount and grace period, where it runs, the common pod settings. */}}
{{- define "moxin.engineScheduling" -}}
serviceAccountName: {{ include "moxin.engineServiceAccount" .root | quote }}
terminationGracePeriodSeconds: {{ int .root.Values.engine.terminationGracePeriodSeconds }}
{{- include "moxin.devicePlacement" . }}
{{ include "moxin.podBasics" .root }}
{{- end }}

{{/* Init container that fetches the checkpoint from object storage (modelStorage.type objectStore). */}}
{{- define "moxin.fetchModel" -}}
{{- if and (eq .root.Values.modelStorage.type "objectStore") .a.modelSubPath }}
initContainers:
  - name: fetch-model
    image: {{ .root.Values.modelStorage.objectStore.image | quote }}
    imagePullPolicy: IfNotPresent
    args:
      - copy
      - --transfers=16
      - {{ printf "%s/%s" .root.Values.modelStorage.objectStore.remote .a.modelSubPath | quote }}
      - {{ printf "%s/%s" .root.Values.modelStorage.mountPath .a.modelSubPath | quote }}
    {{- with .root.Values.modelStorage.objectStore.secretName }}
    envFrom:
      - secretRef:
          name: {{ . | quote }}
    {{- end }}
    volumeMounts:
      - name: models
        mountPath: {{ .root.Values.modelStorage.mountPath | quote }}
      - name: tmp
        mountPath: /tmp
    securityContext:
      {{- include "moxin.containerSecurityContext" (dict "root" .root) | nindent 6 }}
{{- end }}
{{- end }}

{{/* Startup, readiness and liveness probes on the engine's health path; the startup budget covers
the launch's readinessTimeoutSeconds (weights load time included). */}}
{{- define "moxin.engineProbes" -}}
{{- $p := .root.Values.engine.probes -}}
startupProbe:
  httpGet:
    path: {{ .a.healthPath | quote }}
    port: http
  periodSeconds: {{ int $p.periodSeconds }}
  timeoutSeconds: {{ int $p.timeoutSeconds }}
  failureThreshold: {{ add1 (div (add .a.readinessTimeoutSeconds (sub $p.periodSeconds 1)) $p.periodSeconds) }}
readinessProbe:
  httpGet:
    path: {{ .a.healthPath | quote }}
    port: http
  periodSeconds: {{ int $p.readinessPeriodSeconds }}
  timeoutSeconds: {{ int $p.timeoutSeconds }}
  failureThreshold: 3
livenessProbe:
  httpGet:
    path: {{ .a.healthPath | quote }}
    port: http
  periodSeconds: {{ int $p.livenessPeriodSeconds }}
  timeoutSeconds: {{ int $p.timeoutSeconds }}
  failureThreshold: {{ int $p.livenessFailureThreshold }}
{{- end }}

{{/* preStop sleep of a serving container: Service endpoints and load balancers stop sending it new connections
before it gets SIGTERM (the grace period counts this sleep too). Nothing when seconds is 0. */}}
{{- define "moxin.preStop" -}}
{{- if gt (int .) 0 }}
lifecycle:
  preStop:
    exec:
      command: ["sleep", {{ toString (int .) | quote }}]
{{- end }}
{{- end }}
