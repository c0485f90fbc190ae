{{- define "umbra.labels" -}}
app.kubernetes.io/name: umbra
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
{{- end -}}

{{- define "umbra.selector" -}}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{- /* Whether the workers keep their operation records on a PersistentVolumeClaim (workers.operationsVolume). */ -}}
{{- define "umbra.operationsOnClaim" -}}
{{- $ops := .Values.workers.operationsVolume -}}
{{- if or $ops.claimTemplate $ops.existingClaim }}true{{ end -}}
{{- end -}}

{{- /* Refuses values the services cannot run with; included once, by services.yaml. */ -}}
{{- define "umbra.validate" -}}
{{- $db := .Values.database -}}
{{- $coordinator := .Values.services.coordinator -}}
{{- if $db.enabled -}}
{{- if not $db.urlSecretKey -}}
{{- fail "database.enabled is true but database.urlSecretKey is empty: name the key of the Secret `secretName` that holds the coordinator's database URL (e.g. database-url)" -}}
{{- end -}}
{{- else -}}
{{- if or (gt (int $coordinator.replicas) 1) $coordinator.autoscaling.enabled -}}
{{- fail (printf "services.coordinator.replicas is %v and services.coordinator.autoscaling.enabled is %v, but database.enabled is false: the embedded SQLite database allows ONE coordinator replica. Either set database.enabled=true (with the PostgreSQL URL under database.urlSecretKey in the Secret named by secretName), or set services.coordinator.replicas=1 and services.coordinator.autoscaling.enabled=false" $coordinator.replicas (default false $coordinator.autoscaling.enabled)) -}}
{{- end -}}
{{- if not (or $db.embedded.claimTemplate $db.embedded.existingClaim) -}}
{{- fail "database.enabled is false, so the coordinator keeps its state in SQLite under /state: set database.embedded.claimTemplate (a PersistentVolumeClaim spec) or database.embedded.existingClaim, or set database.enabled=true" -}}
{{- end -}}
{{- end -}}
{{- $metrics := .Values.metrics | default dict -}}
{{- if $metrics.enabled -}}
{{- $port := int $metrics.port -}}
{{- if or (lt $port 1) (gt $port 65535) -}}
{{- fail (printf "metrics.port is %v: a port (1 to 65535); set metrics.enabled=false to turn the metrics off" $metrics.port) -}}
{{- end -}}
{{- range $name, $svc := .Values.services -}}
{{- if eq $port (int $svc.port) -}}
{{- fail (printf "metrics.port %d is services.%s.port, its gRPC port: the metrics need a port of their own" $port $name) -}}
{{- end -}}
{{- end -}}
{{- else if dig "serviceMonitor" "enabled" false $metrics -}}
{{- fail "metrics.serviceMonitor.enabled needs metrics.enabled=true: with the metrics off there is nothing to scrape" -}}
{{- end -}}
{{- $ops := .Values.workers.operationsVolume -}}
{{- if and $ops.claimTemplate $ops.existingClaim -}}
{{- fail "set workers.operationsVolume.claimTemplate or workers.operationsVolume.existingClaim, not both" -}}
{{- end -}}
{{- if or $ops.claimTemplate $ops.existingClaim -}}
{{- range $name, $svc := .Values.services -}}
{{- if and (ne $name "coordinator") (or (gt (int $svc.replicas) 1) $svc.autoscaling.enabled) -}}
{{- fail (printf "workers.operationsVolume is set, so each worker's operation records are one SQLite file on one claim, which one pod may own: set services.%s.replicas=1 and services.%s.autoscaling.enabled=false (or leave workers.operationsVolume empty)" $name $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
