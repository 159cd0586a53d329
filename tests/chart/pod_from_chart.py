"""Turn the chart's DaemonSet into one Pod per node, as the kubelet would run it, for
`podman kube play` (used by tests/e2e_pod.rs).

Input: a JSON file
    {"values": {...},                      chart values shared by every node
     "pod_prefix": "pm123-token",          pod names are <pod_prefix>-<node name>
     "nodes": [{"name": "node1", "ip": "10.0.0.10", "values": {...}}, ...],
     "out": "/tmp/dir"}
The chart is rendered offline (as tests/chart does) once per node with the shared values merged
with the node's own (containerd paths: each node's containerd is the test's own), so hostPaths
and the paths in the containers' args are the node's. The generated Secrets (DHT key, token, CA
and certificate) are taken from the first render only: one install, one set of secrets.

What the kubelet would do, done here:
- the pod template's spec, with env `fieldRef`s (status.hostIP, ...) replaced by their values
  and `$(VAR)` in command and args expanded;
- Secret and ConfigMap volumes as directories of files (items, modes) under out/volumes/<node>/;
The headless Service's DNS name (the `--bootstrap dns:` host, in the summary) is left to the
test: podman 4.3 ignores hostAliases under hostNetwork, so it writes a hosts file naming every
node under it and gives it to podman as containers.conf's `base_hosts_file`.
Two changes podman 4.3 needs and a kubelet does not (FIELD-NOTES): no `ports` under
hostNetwork (probes get the port numbers instead of names), and `restartPolicy: OnFailure`
(with Always, podman restarts the finished init container). Nothing else is changed: the
containers, args, probes, lifecycle hooks and security contexts are the rendered ones.

Output: out/<node>.yaml per node, and out/summary.json with each pod's name, image, readiness
probe, security contexts, preStop commands and grace period, for the test.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import merged, one, render  # noqa: E402

FIELD_REFS = {"status.hostIP", "status.podIP", "status.hostIPs", "metadata.name", "metadata.namespace", "spec.nodeName"}


def bootstrap_host(spec: dict) -> str | None:
    for c in spec["containers"]:
        for a in c.get("args", []):
            if a.startswith("--bootstrap=dns:"):
                return a.removeprefix("--bootstrap=dns:").rsplit(":", 1)[0]
    return None


def expand(text: str, env: dict[str, str]) -> str:
    """The kubelet's `$(VAR)` expansion: `$$` is a literal `$`, unknown names stay as written."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


def field_value(path: str, node: dict, pod_name: str, namespace: str) -> str:
    if path in ("status.hostIP", "status.podIP", "status.hostIPs"):
        return node["ip"]  # hostNetwork: the pod's IP is the node's
    if path == "metadata.name":
        return pod_name
    if path == "metadata.namespace":
        return namespace
    return node["name"]


def secret_data(docs: list[dict], kind: str, name: str) -> dict[str, bytes]:
    obj = one(docs, kind, name)
    out = {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
    out.update({k: v.encode() for k, v in (obj.get("stringData") or {}).items()})
    return out


def write_volume(src: dict[str, bytes], items: list[dict] | None, mode: int, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    pairs = [(i["key"], i["path"], i.get("mode", mode)) for i in items] if items else [(k, k, mode) for k in src]
    for key, path, m in pairs:
        if key not in src:
            raise SystemExit(f"volume {dest.name}: no key {key!r} in its Secret/ConfigMap")
        f = dest / path
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(src[key])
        os.chmod(f, m)


def pod_for(node: dict, docs: list[dict], first: list[dict], cfg: dict) -> tuple[dict, dict]:
    ds = one(docs, "DaemonSet")
    namespace = ds["metadata"]["namespace"]
    template = copy.deepcopy(ds["spec"]["template"])
    spec = template["spec"]
    name = f"{cfg['pod_prefix']}-{node['name']}"
    out = Path(cfg["out"])

    # Scheduling and API-only fields: nothing for a single node to do.
    for key in ("serviceAccountName", "priorityClassName", "tolerations", "nodeSelector", "affinity",
                "imagePullSecrets", "dnsPolicy", "automountServiceAccountToken"):
        spec.pop(key, None)
    spec["restartPolicy"] = "OnFailure"
    host = bootstrap_host(spec)

    for c in spec.get("initContainers", []) + spec["containers"]:
        for env in c.get("env", []):
            ref = env.get("valueFrom", {}).get("fieldRef")
            if ref:
                if ref["fieldPath"] not in FIELD_REFS:
                    raise SystemExit(f"{c['name']}: unsupported fieldRef {ref['fieldPath']}")
                env.pop("valueFrom")
                env["value"] = field_value(ref["fieldPath"], node, name, namespace)
        # `$(VAR)` in command and args is expanded by the kubelet (podman 4.3 may not).
        env_values = {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}
        for key in ("command", "args"):
            if key in c:
                c[key] = [expand(a, env_values) for a in c[key]]
        ports = {p["name"]: p["containerPort"] for p in c.pop("ports", [])}
        if not spec.get("hostNetwork") and ports:
            raise SystemExit("the test runs the chart with hostNetwork: true (two node addresses)")
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            get = c.get(probe, {}).get("httpGet")
            if get and isinstance(get.get("port"), str):
                get["port"] = ports[get["port"]]

    for vol in spec["volumes"]:
        for kind, src_kind, ref_key in (("secret", "Secret", "secretName"), ("configMap", "ConfigMap", "name")):
            if kind in vol:
                src = vol.pop(kind)
                data = secret_data(first, src_kind, src[ref_key])
                dest = out / "volumes" / node["name"] / vol["name"]
                write_volume(data, src.get("items"), src.get("defaultMode", 0o644), dest)
                vol["hostPath"] = {"path": str(dest), "type": "Directory"}

    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": template["metadata"].get("labels", {})},
        "spec": spec,
    }
    main = spec["containers"][0]
    summary = {
        "pod": name,
        "image": main["image"],
        "readiness": main["readinessProbe"]["httpGet"],
        "pod_security": spec.get("securityContext", {}),
        "container_security": {c["name"]: c.get("securityContext", {})
                               for c in spec.get("initContainers", []) + spec["containers"]},
        "init_containers": [c["name"] for c in spec.get("initContainers", [])],
        "containers": [c["name"] for c in spec["containers"]],
        "bootstrap_host": host,
        # podman 4.3 neither runs preStop hooks nor waits terminationGracePeriodSeconds: the test
        # does both, in the kubelet's order.
        "pre_stop": {c["name"]: c["lifecycle"]["preStop"]["exec"]["command"]
                     for c in spec["containers"] if c.get("lifecycle", {}).get("preStop", {}).get("exec")},
        "grace_seconds": spec.get("terminationGracePeriodSeconds", 30),
    }
    return pod, summary


def main() -> None:
    cfg = json.loads(Path(sys.argv[1]).read_text())
    out = Path(cfg["out"])
    out.mkdir(parents=True, exist_ok=True)
    first = None
    summaries = {}
    for node in cfg["nodes"]:
        docs = render(merged(cfg["values"], node.get("values", {})))
        first = first or docs
        pod, summary = pod_for(node, docs, first, cfg)
        (out / f"{node['name']}.yaml").write_text(yaml.safe_dump(pod, sort_keys=False))
        summaries[node["name"]] = summary
    (out / "summary.json").write_text(json.dumps(summaries, indent=2))


if __name__ == "__main__":
    main()
