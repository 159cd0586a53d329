"""Properties of the rendered manifests that matter on a node: what is mounted how, which
flags the containers get, where secrets go, and how the pods are confined."""

from __future__ import annotations

import base64
import re

import pytest

from conftest import (
    CHART as CHART_DIR,
    CERT_MANAGER,
    SCENARIOS,
    args_map,
    container,
    daemonset,
    find,
    merged,
    mounts,
    notes,
    one,
    pod_spec,
    render,
    volumes,
)

ALL_CONTAINERS = ("initContainers", "containers")


def all_containers(spec):
    return [c for group in ALL_CONTAINERS for c in spec.get(group, [])]


# --- node mounts -------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_container_names_are_unique_across_init_containers(scenario):
    """The API server (and podman kube play) refuses a Pod whose init containers and containers
    share a name; kubernetes-validate's schema does not see it."""
    names = [c["name"] for c in all_containers(pod_spec(SCENARIOS[scenario]))]
    assert len(names) == len(set(names)), names


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_containerd_socket_and_content_are_read_only_host_paths(scenario):
    values = SCENARIOS[scenario]
    spec = pod_spec(values)
    vols = volumes(spec)
    sock = vols["containerd-socket-dir"]["hostPath"]
    assert sock == {"path": "/run/containerd", "type": "Directory"}
    content_dir = merged({"containerd": {"contentDir": "/var/lib/containerd/io.containerd.content.v1.content"}}, values)["containerd"]["contentDir"]
    if content_dir:
        assert vols["containerd-content"]["hostPath"] == {"path": content_dir, "type": "Directory"}
    else:
        assert "containerd-content" not in vols
    for c in all_containers(spec):
        m = mounts(c)
        for name in ("containerd-socket-dir", "containerd-content"):
            if name in m:
                assert m[name]["readOnly"] is True, f"{c['name']} mounts {name} writable"
    main = mounts(container(spec, "peermirror"))
    assert main["containerd-socket-dir"]["mountPath"] == "/run/containerd"
    if content_dir:
        assert main["containerd-content"]["mountPath"] == content_dir


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_containerd_config_path_writable_only_where_needed(scenario):
    """Read-write for the configure init container, and for the main container only for its
    preStop restore; read-only for the host-files sidecar; absent elsewhere."""
    values = SCENARIOS[scenario]
    spec = pod_spec(values)
    restore = merged({"containerd": {"restoreOnStop": True}}, values)["containerd"]["restoreOnStop"]
    config_path = merged({"containerd": {"configPath": "/etc/containerd/certs.d"}}, values)["containerd"]["configPath"]
    assert volumes(spec)["containerd-config"]["hostPath"] == {"path": config_path, "type": "DirectoryOrCreate"}
    for c in all_containers(spec):
        m = mounts(c).get("containerd-config")
        if c["name"] == "configure":
            assert m and not m.get("readOnly") and m["mountPath"] == config_path
        elif c["name"] == "peermirror":
            if restore:
                assert m and not m.get("readOnly")
                assert c["lifecycle"]["preStop"]["exec"]["command"] == [
                    "peermirror", "configure", f"--config-path={config_path}", "--restore"]
            else:
                assert m is None and "lifecycle" not in c
        elif m is not None:
            assert m["readOnly"] is True, f"{c['name']} mounts containerd-config writable"


def test_data_dir_host_path_or_empty_dir():
    vols = volumes(pod_spec())
    assert vols["data"]["hostPath"] == {"path": "/var/lib/peermirror", "type": "DirectoryOrCreate"}
    assert volumes(pod_spec({"dataDir": {"type": "emptyDir"}}))["data"] == {"name": "data", "emptyDir": {}}
    run = args_map(container(pod_spec(), "peermirror")["args"])
    assert run["--data-dir"] == ["/var/lib/peermirror"]
    assert mounts(container(pod_spec(), "peermirror"))["data"]["mountPath"] == "/var/lib/peermirror"


# --- init container: peermirror configure --------------------------------------------------


def configure_args(values=None):
    c = container(pod_spec(values), "configure", init=True)
    assert c["command"] == ["peermirror"] and c["args"][0] == "configure"
    return args_map(c["args"])


def test_configure_defaults_mtls():
    a = configure_args()
    assert a["--config-path"] == ["/etc/containerd/certs.d"]
    assert a["--mirror"] == ["https://127.0.0.1:5000"]
    assert a["--registry"] == ["https://docker.io", "https://ghcr.io", "https://quay.io", "https://registry.k8s.io"]
    assert a["--ca-file"] == ["/etc/peermirror/certs/ca.crt"]
    assert a["--client-cert"] == ["/etc/peermirror/certs/client.crt"]
    assert a["--client-key"] == ["/etc/peermirror/certs/client.key"]
    assert "--token-file" not in a
    assert a["--dial-timeout"] == ["200ms"]


def test_configure_follows_values():
    values = {
        "ports": {"registry": 31000},
        "containerd": {"registries": ["https://example.com:8443", "http://insecure.local"], "configPath": "/etc/ctr/hosts", "mirrorHost": "::1"},
        "hostFiles": {"path": "/opt/pm"},
    }
    a = configure_args(values)
    assert a["--mirror"] == ["https://[::1]:31000"]
    assert a["--registry"] == ["https://example.com:8443", "http://insecure.local"]
    assert a["--config-path"] == ["/etc/ctr/hosts"]
    assert a["--ca-file"] == ["/opt/pm/ca.crt"]
    c = container(pod_spec(values), "configure", init=True)
    assert mounts(c)["containerd-config"]["mountPath"] == "/etc/ctr/hosts"
    # configure checks the files exist, so it sees them where containerd will.
    assert mounts(c)["host-files"] == {"name": "host-files", "mountPath": "/opt/pm", "readOnly": True}


def test_configure_modes():
    token = configure_args(SCENARIOS["token-generated"])
    assert token["--mirror"] == ["https://127.0.0.1:5000"]
    assert token["--ca-file"] == ["/etc/peermirror/certs/ca.crt"]
    assert "--client-cert" not in token and "--client-key" not in token
    assert token["--token-file"] == ["/secrets/token/token"]

    plain = configure_args(SCENARIOS["token-existing-no-tls"])
    assert plain["--mirror"] == ["http://127.0.0.1:5000"]
    assert "--ca-file" not in plain and "--client-cert" not in plain
    assert plain["--token-file"] == ["/secrets/token/token"]

    both = configure_args(SCENARIOS["mtls+token-cert-manager"])
    assert both["--client-cert"] and both["--token-file"] == ["/secrets/token/token"]

    none = configure_args(SCENARIOS["none"])
    assert none["--mirror"] == ["http://127.0.0.1:5000"]
    assert not {"--ca-file", "--client-cert", "--token-file"} & set(none)

    opts = configure_args(SCENARIOS["options"])
    assert "--registry" not in opts  # _default/hosts.toml
    assert opts["--keep-existing-mirrors"] == [""]
    assert opts["--dial-timeout"] == ["none"]
    assert opts["--mirror"] == ["https://127.0.0.1:30500"]


def test_node_ip_mirror_host_needs_plain_http():
    values = {"containerd": {"mirrorHost": "$(NODE_IP)"}, "auth": {"mode": "token"}, "tls": {"generate": {"enabled": False}}}
    a = configure_args(values)
    assert a["--mirror"] == ["http://$(NODE_IP):5000"]
    env = container(pod_spec(values), "configure", init=True)["env"]
    assert {"name": "NODE_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}} in env
    with pytest.raises(Exception, match="NODE_IP"):
        render({"containerd": {"mirrorHost": "$(NODE_IP)"}})


# --- main container: peermirror run --------------------------------------------------------


def run_args(values=None):
    c = container(pod_spec(values), "peermirror")
    assert c["command"] == ["peermirror"] and c["args"][0] == "run"
    return args_map(c["args"])


def test_run_defaults():
    a = run_args()
    assert a["--containerd-sock"] == ["/run/containerd/containerd.sock"]
    assert a["--containerd-namespace"] == ["k8s.io"]
    assert a["--containerd-content-dir"] == ["/var/lib/containerd/io.containerd.content.v1.content"]
    assert a["--registry-addr"] == ["0.0.0.0:5000"]
    assert a["--router-addr"] == ["0.0.0.0:5001"]
    assert a["--metrics-addr"] == ["0.0.0.0:9090"]
    assert a["--advertise-addr"] == ["$(NODE_IP)"]
    assert a["--bootstrap"] == ["dns:peermirror.kube-system.svc.cluster.local:5001"]
    assert a["--auth-mode"] == ["mtls"]
    assert "--insecure-no-auth" not in a
    assert a["--tls-cert"] == ["/secrets/tls/tls.crt"]
    assert a["--tls-key"] == ["/secrets/tls/tls.key"]
    assert a["--tls-client-ca"] == ["/secrets/tls/ca.crt"]
    assert a["--tls-peer-server-name"] == ["peermirror.kube-system.svc"]
    assert a["--p2p-psk-file"] == ["/secrets/p2p/psk"]
    assert "--tls-crl" not in a and "--token-file" not in a
    env = container(pod_spec(), "peermirror")["env"]
    assert env == [{"name": "NODE_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}}]


def test_run_ports_match_container_and_host_ports():
    for values in (SCENARIOS["default"], SCENARIOS["options"]):
        c = container(pod_spec(values), "peermirror")
        a = args_map(c["args"])
        ports = {p["name"]: p for p in c["ports"]}
        reg = int(a["--registry-addr"][0].rsplit(":", 1)[1])
        router = int(a["--router-addr"][0].rsplit(":", 1)[1])
        metrics = int(a["--metrics-addr"][0].rsplit(":", 1)[1])
        assert ports["registry"]["containerPort"] == ports["registry"]["hostPort"] == reg
        assert ports["router"]["containerPort"] == ports["router"]["hostPort"] == router
        assert ports["metrics"]["containerPort"] == metrics and "hostPort" not in ports["metrics"]
        assert a["--bootstrap"][0].endswith(f":{router}")
        mirror = configure_args(values)["--mirror"][0]
        assert mirror.endswith(f":{reg}")
    assert run_args(SCENARIOS["options"])["--bootstrap"] == ["dns:pm.kube-system.svc.cluster.local:30501"]


def test_run_flags_follow_values():
    a = run_args(SCENARIOS["options"])
    assert "--containerd-content-dir" not in a
    assert a["--max-egress-bps"] == ["100000000"]
    assert a["--max-concurrent-uploads"] == ["0"]
    assert a["--resolve-tags"] == ["false"]
    assert a["--p2p-psk-file"] == ["/secrets/p2p/psk"]
    spec = pod_spec(SCENARIOS["options"])
    assert volumes(spec)["p2p-psk"]["secret"] == {
        "secretName": "pm-psk", "defaultMode": 0o400, "items": [{"key": "swarm.key", "path": "psk"}]}
    b = run_args({"logging": {"format": "text", "level": "debug,audit=warn"}, "mirror": {"resolveTimeout": "50ms", "drainTimeout": "1m"}})
    assert b["--log-format"] == ["text"] and b["--log-level"] == ["debug,audit=warn"]
    assert b["--mirror-resolve-timeout"] == ["50ms"] and b["--drain-timeout"] == ["1m"]


def test_run_auth_modes():
    token = run_args(SCENARIOS["token-generated"])
    assert token["--auth-mode"] == ["token"]
    assert token["--token-file"] == ["/secrets/token/token"]
    assert token["--tls-peer-ca"] == ["/secrets/tls/ca.crt"] and "--tls-client-ca" not in token

    plain = run_args(SCENARIOS["token-existing-no-tls"])
    assert not {"--tls-cert", "--tls-key", "--tls-client-ca", "--tls-peer-ca"} & set(plain)
    spec = pod_spec(SCENARIOS["token-existing-no-tls"])
    assert volumes(spec)["token"]["secret"]["secretName"] == "pm-token"
    assert volumes(spec)["token"]["secret"]["items"] == [{"key": "bearer", "path": "token"}]
    assert "host-files" not in [c["name"] for c in all_containers(spec)]

    both = run_args(SCENARIOS["mtls+token-cert-manager"])
    assert both["--auth-mode"] == ["mtls+token"]
    assert both["--tls-client-ca"] == ["/secrets/tls/ca.crt"] and both["--token-file"]

    none = run_args(SCENARIOS["none"])
    assert none["--auth-mode"] == ["none"] and none["--insecure-no-auth"] == [""]
    assert "--p2p-psk-file" not in none and "--tls-cert" not in none


def test_crl_from_secret_or_configmap():
    a = run_args(SCENARIOS["mtls-existing-secret-crl-secret"])
    assert a["--tls-crl"] == ["/secrets/crl/crl.pem"] and a["--crl-expired"] == ["warn"]
    vols = volumes(pod_spec(SCENARIOS["mtls-existing-secret-crl-secret"]))
    assert vols["crl"]["secret"]["secretName"] == "pm-crl"
    assert vols["crl"]["secret"]["items"] == [{"key": "list.crl", "path": "crl.pem"}]
    assert vols["tls"]["secret"]["secretName"] == "pm-tls"
    cm = volumes(pod_spec(SCENARIOS["mtls-cert-manager-crl-configmap"]))["crl"]["configMap"]
    assert cm["name"] == "pm-crl" and cm["items"] == [{"key": "crl.pem", "path": "crl.pem"}]
    assert run_args(SCENARIOS["mtls-cert-manager-crl-configmap"])["--crl-expired"] == ["deny"]


# --- secrets ------------------------------------------------------------------------------

SECRETISH = re.compile(r"(BEGIN [A-Z ]*PRIVATE KEY|/key/swarm/psk|Bearer\s|[A-Za-z0-9+/]{40,})")


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_no_secret_in_env_or_args(scenario):
    spec = pod_spec(SCENARIOS[scenario])
    for c in all_containers(spec):
        for e in c.get("env", []):
            if "value" in e:
                assert not SECRETISH.search(str(e["value"])), f"{c['name']} env {e['name']} looks secret"
                assert not re.search(r"token|key|secret|password|psk", e["name"], re.I), e
            else:
                src = e["valueFrom"]
                assert set(src) <= {"fieldRef", "secretKeyRef", "resourceFieldRef"}, e
        assert "envFrom" not in c
        for a in c.get("args", []) + c.get("command", []):
            assert not SECRETISH.search(a), f"{c['name']} arg {a[:60]}"
    for v in spec["volumes"]:
        if "secret" in v:
            # Readable by root only; the CRL (public anyway) may be world-readable.
            assert v["secret"]["defaultMode"] == (0o444 if v["name"] == "crl" else 0o400)
            assert "items" in v["secret"]
    for c in all_containers(spec):
        for m in c.get("volumeMounts", []):
            assert "subPath" not in m, "subPath mounts never see Secret updates"
            if m["name"] in ("tls", "token", "p2p-psk", "crl"):
                assert m["readOnly"] is True


def test_generated_token_and_psk_are_kept_and_well_formed():
    docs = render(SCENARIOS["token-generated"])
    token = one(docs, "Secret", "peermirror-token")
    psk = one(docs, "Secret", "peermirror-p2p-psk")
    for s in (token, psk):
        assert s["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    value = base64.b64decode(token["data"]["token"]).decode()
    assert re.fullmatch(r"[A-Za-z0-9]{48}", value)
    key = base64.b64decode(psk["data"]["psk"]).decode()
    assert re.fullmatch(r"/key/swarm/psk/1\.0\.0/\n/base16/\n[0-9a-f]{64}\n", key)
    # Each install draws new values (offline `lookup` finds nothing to reuse).
    again = render(merged(SCENARIOS["token-generated"], {"commonLabels": {"x": "y"}}))
    assert one(again, "Secret", "peermirror-token")["data"] != token["data"]


def test_existing_secrets_are_not_generated():
    docs = render(SCENARIOS["token-existing-no-tls"])
    assert not find(docs, "Secret", "peermirror-token")
    assert not find(render(SCENARIOS["options"]), "Secret", "pm-p2p-psk")
    assert not find(render(SCENARIOS["none"]), "Secret")
    assert not find(render(SCENARIOS["mtls-existing-secret-crl-secret"]), "Secret", "peermirror-tls")


def test_generated_tls_secret():
    docs = render()
    ca = one(docs, "Secret", "peermirror-ca")
    tls = one(docs, "Secret", "peermirror-tls")
    assert ca["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert tls["type"] == "kubernetes.io/tls"
    pem = {k: base64.b64decode(v).decode() for k, v in tls["data"].items()}
    assert pem["tls.crt"].startswith("-----BEGIN CERTIFICATE-----")
    assert "PRIVATE KEY-----" in pem["tls.key"]
    assert pem["ca.crt"] == base64.b64decode(ca["data"]["ca.crt"]).decode()
    # The CA key stays out of the pods: the tls volume names its three keys only.
    items = volumes(pod_spec())["tls"]["secret"]["items"]
    assert sorted(i["key"] for i in items) == ["ca.crt", "tls.crt", "tls.key"]


def test_cert_manager_certificate():
    docs = render(SCENARIOS["mtls+token-cert-manager"])
    cert = one(docs, "Certificate")
    spec = cert["spec"]
    assert cert["apiVersion"] == "cert-manager.io/v1"
    assert spec["secretName"] == "peermirror-tls"
    assert spec["issuerRef"] == {"name": "cluster-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    assert {"server auth", "client auth"} <= set(spec["usages"])
    assert spec["ipAddresses"] == ["127.0.0.1"]
    assert spec["dnsNames"] == ["peermirror.kube-system.svc"]
    assert spec["privateKey"]["algorithm"] == "ECDSA" and spec["privateKey"]["size"] == 256
    assert run_args(SCENARIOS["mtls+token-cert-manager"])["--tls-peer-server-name"] == spec["dnsNames"]
    assert not find(docs, "Secret", "peermirror-tls") and not find(docs, "Secret", "peermirror-ca")
    named = render({"tls": {"certManager": merged(CERT_MANAGER, {"extraDnsNames": ["pm.example"], "privateKey": {"algorithm": "Ed25519"}}),
                            "peerServerName": "mirror.internal"}})
    spec = one(named, "Certificate")["spec"]
    assert spec["dnsNames"] == ["mirror.internal", "pm.example"]
    assert "size" not in spec["privateKey"]


# --- host files for containerd ------------------------------------------------------------


def test_host_files_containers():
    spec = pod_spec()
    init = [c["name"] for c in spec["initContainers"]]
    assert init == ["host-files-init", "configure"], "certificates must be on the node before configure checks them"
    sidecar = container(spec, "host-files")
    assert sidecar["command"][:2] == ["/bin/sh", "-c"] and sidecar["command"][-1] == "loop"
    assert sidecar["lifecycle"]["preStop"]["exec"]["command"][-1] == "cleanup"
    m = mounts(sidecar)
    assert m["host-files"]["mountPath"] == "/etc/peermirror/certs" and not m["host-files"].get("readOnly")
    assert volumes(spec)["host-files"]["hostPath"] == {"path": "/etc/peermirror/certs", "type": "DirectoryOrCreate"}
    # Another image for the shell when asked.
    opts = pod_spec(SCENARIOS["options"])
    assert container(opts, "host-files")["image"] == "busybox:1.36"
    assert "lifecycle" not in container(opts, "host-files")  # no restore, so nothing to clean
    assert container(opts, "peermirror")["image"] == "localhost/peermirror@sha256:" + "ab" * 32


# --- pod-level properties -----------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_security_context(scenario):
    spec = pod_spec(SCENARIOS[scenario])
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    for c in all_containers(spec):
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["privileged"] is False, c["name"]
        assert sc["capabilities"] == {"drop": ["ALL"]}, c["name"]
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, c["name"]
        assert sc["runAsUser"] == 0, c["name"]
        assert c["resources"]["requests"] and c["resources"]["limits"], c["name"]


def test_scheduling_and_rollout():
    ds = daemonset()
    spec = ds["spec"]["template"]["spec"]
    assert spec["tolerations"] == [{"operator": "Exists"}]
    assert spec["priorityClassName"] == "system-node-critical"
    assert ds["spec"]["updateStrategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}
    assert spec["hostNetwork"] is False and "dnsPolicy" not in spec
    assert spec["terminationGracePeriodSeconds"] > 30  # drain timeout
    main = container(spec, "peermirror")
    assert main["resources"] == {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}}
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    opts = daemonset(SCENARIOS["options"])
    assert opts["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == "10%"
    ospec = opts["spec"]["template"]["spec"]
    assert ospec["hostNetwork"] is True and ospec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert container(ospec, "peermirror")["env"][-1] == {"name": "RUST_BACKTRACE", "value": "1"}
    # Lists replace the default; a map key is removed by setting it to null (Helm merges maps).
    custom = pod_spec({"tolerations": [], "priorityClassName": "", "nodeSelector": {"kubernetes.io/os": None}})
    assert not {"tolerations", "nodeSelector", "priorityClassName"} & set(custom)


def test_services():
    docs = render()
    headless = one(docs, "Service", "peermirror")["spec"]
    assert headless["clusterIP"] == "None" and headless["publishNotReadyAddresses"] is True
    assert headless["ports"] == [{"name": "router", "port": 5001, "targetPort": "router", "protocol": "TCP"}]
    pod_labels = daemonset()["spec"]["template"]["metadata"]["labels"]
    for svc in find(docs, "Service"):
        assert set(svc["spec"]["selector"].items()) <= set(pod_labels.items())
    metrics = one(docs, "Service", "peermirror-metrics")["spec"]
    assert metrics["ports"][0]["port"] == 9090
    assert not find(render({"metricsService": {"enabled": False}}), "Service", "peermirror-metrics")


def test_network_policy():
    pol = one(render(SCENARIOS["network-policy"]), "NetworkPolicy")["spec"]
    assert pol["policyTypes"] == ["Ingress"]
    data, metrics = pol["ingress"]
    assert {p["port"] for p in data["ports"]} == {5000, 5001}
    cidrs = [f["ipBlock"]["cidr"] for f in data["from"] if "ipBlock" in f]
    assert cidrs == ["10.0.0.0/16", "fd00::/64"]
    assert any("podSelector" in f for f in data["from"])
    assert metrics == {"ports": [{"port": 9090, "protocol": "TCP"}]}  # from anywhere by default
    custom = render(merged(SCENARIOS["network-policy"], {"networkPolicy": {"metricsFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]}}))
    assert one(custom, "NetworkPolicy")["spec"]["ingress"][1]["from"] == [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]
    assert not find(render(), "NetworkPolicy")


def test_monitoring_resources():
    docs = render(SCENARIOS["monitoring"])
    sm = one(docs, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "prom"
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    metrics_svc = one(docs, "Service", "peermirror-metrics")
    assert set(sm["spec"]["selector"]["matchLabels"].items()) <= set(metrics_svc["metadata"]["labels"].items())

    rules = {r["alert"]: r for r in one(docs, "PrometheusRule")["spec"]["groups"][0]["rules"]}
    assert "peermirror_connected_peers" in rules["PeermirrorNoPeers"]["expr"] and "== 0" in rules["PeermirrorNoPeers"]["expr"]
    assert "rate(peermirror_auth_failures_total" in rules["PeermirrorAuthFailuresSpiking"]["expr"]
    assert "peermirror_provider_failures_total" in rules["PeermirrorMirrorErrorsRising"]["expr"]
    assert "increase(peermirror_local_faults_total" in rules["PeermirrorLocalFaults"]["expr"]
    assert "by (namespace, pod, kind)" in rules["PeermirrorLocalFaults"]["expr"]
    assert "peermirror_crl_next_update_seconds" in rules["PeermirrorCRLExpiringSoon"]["expr"]
    assert "< 86400" in rules["PeermirrorCRLExpiringSoon"]["expr"]
    for r in rules.values():
        assert r["labels"]["team"] == "platform"
        assert 'namespace="kube-system"' in r["expr"]
        assert r["expr"].count("{") == r["expr"].count("}")
    # Without a CRL the gauge sits at 0: no CRL alert then.
    no_crl = render({"prometheusRule": {"enabled": True}})
    alerts = [r["alert"] for r in one(no_crl, "PrometheusRule")["spec"]["groups"][0]["rules"]]
    assert "PeermirrorCRLExpiringSoon" not in alerts and "PeermirrorNoPeers" in alerts

    cm = one(docs, "ConfigMap", "peermirror-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    import json
    dash = json.loads(cm["data"]["peermirror.json"])
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    for metric in ("peermirror_connected_peers", "peermirror_requests_total", "peermirror_response_bytes_total",
                   "peermirror_resolve_seconds_bucket", "peermirror_auth_failures_total"):
        assert metric in exprs
    assert not find(render(), "ServiceMonitor") and not find(render(), "PrometheusRule") and not find(render(), "ConfigMap")


def test_notes():
    text = notes()
    assert "peermirror status" in text and "https://127.0.0.1:5000" in text
    assert "WARNING" not in text
    assert "WARNING: auth.mode none" in notes(SCENARIOS["none"])
    assert "WARNING: token mode without TLS" in notes(SCENARIOS["token-existing-no-tls"])


# --- values the chart refuses -------------------------------------------------------------

# (values, text the error must contain). The schema refuses all but the last few, so both
# `helm install` and `helm lint` stop them; Helm's lint ignores a template's `fail`, so the
# checks JSON Schema cannot express (TEMPLATE_ONLY) stop `helm install` only.
REFUSED = {
    "auth.mode bogus": ({"auth": {"mode": "bogus"}}, "/auth/mode"),
    "unknown top-level key": ({"bogus": 1}, "bogus"),
    "unknown nested key": ({"tls": {"certManager": {"issuer": "x"}}}, "issuer"),
    "port out of range": ({"ports": {"registry": 70000}}, "/ports/registry"),
    "port as string": ({"ports": {"router": "5001"}}, "/ports/router"),
    "dataDir type": ({"dataDir": {"type": "pvc"}}, "/dataDir/type"),
    "registry without scheme": ({"containerd": {"registries": ["docker.io"]}}, "/containerd/registries/0"),
    "registry with path": ({"containerd": {"registries": ["https://docker.io/v2"]}}, "/containerd/registries/0"),
    "relative config path": ({"containerd": {"configPath": "etc/containerd"}}, "/containerd/configPath"),
    "crl expired": ({"tls": {"crl": {"expired": "ignore"}}}, "/tls/crl/expired"),
    "log format": ({"logging": {"format": "xml"}}, "/logging/format"),
    "duration": ({"mirror": {"resolveTimeout": "20"}}, "/mirror/resolveTimeout"),
    "issuer kind": ({"tls": {"certManager": {"issuerRef": {"kind": "Foo"}}}}, "/tls/certManager/issuerRef/kind"),
    "none without opt-in": ({"auth": {"mode": "none"}}, "/auth/insecureNoAuth"),
    "opt-in without none": ({"auth": {"insecureNoAuth": True}}, "/auth/mode"),
    "mtls without TLS": ({"tls": {"generate": {"enabled": False}}}, "/tls/generate/enabled"),
    "mtls+token without TLS": ({"auth": {"mode": "mtls+token"}, "tls": {"generate": {"enabled": False}}}, "/tls/certManager/enabled"),
    "two TLS sources": ({"tls": {"existingSecret": "a", "certManager": CERT_MANAGER}}, "/tls/existingSecret"),
    "cert-manager without issuer": ({"tls": {"certManager": {"enabled": True}}}, "/tls/certManager/issuerRef/name"),
    "two CRL sources": ({"tls": {"crl": {"existingSecret": "a", "existingConfigMap": "b"}}}, "/tls/crl/existingConfigMap"),
    "CRL without TLS": ({"auth": {"mode": "token"}, "tls": {"generate": {"enabled": False}, "crl": {"existingSecret": "a"}}}, "/tls/existingSecret"),
    "network policy without CIDRs": ({"networkPolicy": {"enabled": True}}, "/networkPolicy/nodeCIDRs"),
    "bad CIDR": ({"networkPolicy": {"enabled": True, "nodeCIDRs": ["10.0.0.0"]}}, "/networkPolicy/nodeCIDRs/0"),
    "service monitor without service": ({"serviceMonitor": {"enabled": True}, "metricsService": {"enabled": False}}, "/metricsService/enabled"),
    "helper image without tag": ({"hostFiles": {"image": {"repository": "busybox"}}}, "/hostFiles/image/tag"),
    "same port twice": ({"ports": {"registry": 5001}}, "must differ"),
    "node IP mirror with TLS": ({"containerd": {"mirrorHost": "$(NODE_IP)"}}, "NODE_IP"),
}
TEMPLATE_ONLY = {"same port twice", "node IP mirror with TLS"}


@pytest.mark.parametrize("case", REFUSED)
def test_refused_values(case):
    import helm_python

    from conftest import CHART

    values, hint = REFUSED[case]
    with pytest.raises(helm_python.HelmError) as err:
        render(values)
    assert hint in str(err.value), str(err.value)
    report = helm_python.lint(str(CHART), values, strict=True, kube_version="v1.33.0")
    if case in TEMPLATE_ONLY:
        assert isinstance(err.value, helm_python.HelmRenderError)
    else:
        assert isinstance(err.value, helm_python.HelmValuesError)
        assert any(hint in e for e in report["errors"]), report


def test_template_checks_back_the_schema():
    """The same rules are also in the templates (clear messages for `--skip-schema-validation`)."""
    text = (CHART_DIR / "templates" / "_helpers.tpl").read_text()
    for phrase in ("insecureNoAuth=true", "needs TLS", "not both", "issuerRef.name", "nodeCIDRs", "metricsService.enabled"):
        assert phrase in text


def test_resolve_tags_is_left_to_the_daemon_unless_set():
    # The daemon turns tags on only under mTLS; the chart must not force them on in token mode.
    for scenario in ("default", "token-generated"):
        assert "--resolve-tags" not in run_args(SCENARIOS[scenario]), scenario
    assert run_args({"mirror": {"resolveTags": True}})["--resolve-tags"] == ["true"]


def test_signing_key_is_mounted_and_passed():
    a = run_args(SCENARIOS["token-signing-key-generated"])
    assert a["--token-signing-key"] == ["/secrets/signing-key/key"]
    assert a["--token-ttl"] == ["10m"]
    assert a["--hosts-dir"] == ["/etc/containerd/certs.d"]
    spec = pod_spec(SCENARIOS["token-signing-key-generated"])
    assert volumes(spec)["signing-key"]["secret"] == {
        "secretName": "peermirror-token-signing-key", "defaultMode": 0o400,
        "items": [{"key": "signing-key", "path": "key"}]}
    m = mounts(container(spec, "peermirror"))
    assert m["signing-key"]["mountPath"] == "/secrets/signing-key"
    assert m["signing-key"]["readOnly"] is True
    assert not m["containerd-config"].get("readOnly")
    spec = pod_spec(SCENARIOS["token-signing-key-existing"])
    assert volumes(spec)["signing-key"]["secret"]["secretName"] == "pm-jwt"
    assert volumes(spec)["signing-key"]["secret"]["items"] == [{"key": "hs256", "path": "key"}]
    # Without token mode, no key.
    a = run_args({"auth": {"token": {"signingKey": {"enabled": True}}}})
    assert "--token-signing-key" not in a and "--hosts-dir" not in a
