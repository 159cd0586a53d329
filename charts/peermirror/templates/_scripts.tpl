{{/*
Shell for the host-files containers. containerd reads the CA and client certificate named in
hosts.toml from the node's filesystem, so they are copied from the Secret volume to
hostFiles.path (mounted at the same path in the container). Each pair of files is copied
only when it differs, to a temporary name first, then renamed into place.

Argument: the root context. The first shell argument picks the action:
  sync     copy once (init container)
  loop     copy every hostFiles.syncIntervalSeconds until SIGTERM (sidecar)
  cleanup  remove the files once no hosts.toml under the config path names them (preStop)
*/}}
{{- define "peermirror.hostFilesScript" -}}
set -eu
umask 077
dir={{ .Values.hostFiles.path | quote }}
src={{ printf "%s/tls" (include "peermirror.secretsDir" .) | quote }}
config={{ .Values.containerd.configPath | quote }}
put() {
  if ! cmp -s "$1" "$2"; then
    cp "$1" "$2.tmp"
    chmod "$3" "$2.tmp"
    mv -f "$2.tmp" "$2"
    echo "host-files: updated $2"
  fi
}
sync_files() {
  mkdir -p "$dir"
  chmod 0700 "$dir"
  put "$src/ca.crt" "$dir/ca.crt" 0644
{{- if include "peermirror.needsClientCert" . }}
  put "$src/tls.crt" "$dir/client.crt" 0600
  put "$src/tls.key" "$dir/client.key" 0600
{{- end }}
}
case "$1" in
  sync)
    sync_files
    ;;
  loop)
    trap 'exit 0' TERM INT
    while true; do
      sync_files || echo "host-files: copy failed; retrying" >&2
      sleep {{ int .Values.hostFiles.syncIntervalSeconds }} &
      wait $! || true
    done
    ;;
  cleanup)
    i=0
    while [ "$i" -lt 30 ]; do
      if ! grep -qsF "$dir/" "$config"/*/hosts.toml; then
        rm -f "$dir/ca.crt" "$dir/client.crt" "$dir/client.key"
        rmdir "$dir" 2>/dev/null || true
        echo "host-files: removed $dir"
        exit 0
      fi
      i=$((i + 1))
      sleep 1
    done
    echo "host-files: hosts.toml files still name $dir; leaving its files for containerd" >&2
    ;;
esac
{{- end }}
