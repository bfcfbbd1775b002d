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
{{- range $k, $v := .a.labels }}
{{ $k }}: {{ $v | quote }}
{{- end }}
{{- end }}

{{- define "moxin.routerSelector" -}}
app.kubernetes.io/name: moxin
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/component: router
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
Volumes of an engine pod: shared memory, scratch space for a read-only root filesystem, model storage.
*/}}
{{- define "moxin.engineVolumes" -}}
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .a.sharedMemorySize | default .root.Values.engine.sharedMemorySize }}
- name: tmp
  emptyDir: {}
- name: home
  emptyDir: {}
{{- if eq .root.Values.modelStorage.type "pvc" }}
- name: models
  persistentVolumeClaim:
    claimName: {{ .root.Values.modelStorage.pvc.claimName }}
    readOnly: {{ .root.Values.modelStorage.pvc.readOnly }}
{{- else }}
- name: models
  emptyDir:
    sizeLimit: {{ .root.Values.modelStorage.objectStore.sizeLimit }}
{{- end }}
{{- end }}

{{- define "moxin.engineMounts" -}}
- name: dshm
  mountPath: /dev/shm
- name: tmp
  mountPath: /tmp
- name: home
  mountPath: /home/moxin
- name: models
  mountPath: {{ .root.Values.modelStorage.mountPath }}
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
- name: {{ $k }}
  value: {{ $v | quote }}
{{- end }}
{{- if .root.Values.hubToken.secretName }}
- name: HF_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ .root.Values.hubToken.secretName }}
      key: {{ .root.Values.hubToken.key }}
      optional: true
{{- end }}
{{- end }}

{{/* Container resources: the vendor's extended resource times the devices of this pod, host CPU/memory. */}}
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

{{- define "moxin.engineSecurityContext" -}}
{{- $override := dict -}}
{{- if .a.deviceResource -}}
{{- $override = get .root.Values.engine.securityOverrides .a.deviceResource | default dict -}}
{{- end -}}
{{- toYaml (ternary $override .root.Values.engine.securityContext (gt (len $override) 0)) }}
{{- end }}

{{/* Scheduling: node selector, tolerations (the vendor resource's taint), affinity, runtime class. */}}
{{- define "moxin.engineScheduling" -}}
serviceAccountName: {{ include "moxin.engineServiceAccount" .root }}
automountServiceAccountToken: false
enableServiceLinks: false
terminationGracePeriodSeconds: {{ .root.Values.engine.terminationGracePeriodSeconds }}
{{- with .a.runtimeClassName }}
runtimeClassName: {{ . }}
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
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .root.Values.engine.podSecurityContext | nindent 2 }}
{{- end }}

{{/* Init container that fetches the checkpoint from object storage (modelStorage.type objectStore). */}}
{{- define "moxin.fetchModel" -}}
{{- if and (eq .root.Values.modelStorage.type "objectStore") .a.modelSubPath }}
initContainers:
  - name: fetch-model
    image: {{ .root.Values.modelStorage.objectStore.image }}
    imagePullPolicy: IfNotPresent
    args:
      - copy
      - --transfers=16
      - {{ printf "%s/%s" .root.Values.modelStorage.objectStore.remote .a.modelSubPath | quote }}
      - {{ printf "%s/%s" .root.Values.modelStorage.mountPath .a.modelSubPath | quote }}
    {{- with .root.Values.modelStorage.objectStore.secretName }}
    envFrom:
      - secretRef:
          name: {{ . }}
    {{- end }}
    volumeMounts:
      - name: models
        mountPath: {{ .root.Values.modelStorage.mountPath }}
      - name: tmp
        mountPath: /tmp
    securityContext:
      {{- toYaml .root.Values.engine.securityContext | nindent 6 }}
{{- end }}
{{- end }}

{{/* Startup, readiness and liveness probes on the engine's health path; the startup budget covers
the launch's readinessTimeoutSeconds (weights load time included). */}}
{{- define "moxin.engineProbes" -}}
{{- $p := .root.Values.engine.probes -}}
startupProbe:
  httpGet:
    path: {{ .a.healthPath }}
    port: http
  periodSeconds: {{ $p.periodSeconds }}
  timeoutSeconds: {{ $p.timeoutSeconds }}
  failureThreshold: {{ add1 (div (add .a.readinessTimeoutSeconds (sub $p.periodSeconds 1)) $p.periodSeconds) }}
readinessProbe:
  httpGet:
    path: {{ .a.healthPath }}
    port: http
  periodSeconds: {{ $p.readinessPeriodSeconds }}
  timeoutSeconds: {{ $p.timeoutSeconds }}
  failureThreshold: 3
livenessProbe:
  httpGet:
    path: {{ .a.healthPath }}
    port: http
  periodSeconds: {{ $p.livenessPeriodSeconds }}
  timeoutSeconds: {{ $p.timeoutSeconds }}
  failureThreshold: {{ $p.livenessFailureThreshold }}
{{- end }}
