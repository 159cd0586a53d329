"""Shared helpers for the chart tests: render the chart offline with the Helm SDK
(helm-python-sdk) and pick resources out of the result."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import helm_python
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "peermirror"
RELEASE = "peermirror"
NAMESPACE = "kube-system"
KUBE_VERSIONS = ["1.29.0", "1.33.0"]

# Kinds defined by CRDs (cert-manager, Prometheus Operator): kubernetes-validate bundles only
# the built-in API schemas, so these are checked by the property tests instead.
CRD_KINDS = {
    ("cert-manager.io/v1", "Certificate"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}

# A CA issuer for cert-manager scenarios.
CERT_MANAGER = {"enabled": True, "issuerRef": {"name": "cluster-ca", "kind": "ClusterIssuer"}}

# Value sets rendered, linted and validated. Each covers an auth mode or an option.
SCENARIOS: dict[str, dict] = {
    "default": {},
    "mtls-existing-secret-crl-secret": {
        "tls": {"existingSecret": "pm-tls", "crl": {"existingSecret": "pm-crl", "key": "list.crl", "expired": "warn"}},
    },
    "mtls-cert-manager-crl-configmap": {
        "tls": {"certManager": CERT_MANAGER, "crl": {"existingConfigMap": "pm-crl"}},
    },
    "token-generated": {"auth": {"mode": "token"}},
    "token-existing-no-tls": {
        "auth": {"mode": "token", "token": {"existingSecret": "pm-token", "key": "bearer"}},
        "tls": {"generate": {"enabled": False}},
    },
    "token-signing-key-generated": {"auth": {"mode": "token", "token": {"signingKey": {"enabled": True}, "ttl": "10m"}}},
    "token-signing-key-existing": {
        "auth": {"mode": "mtls+token", "token": {"signingKey": {"enabled": True, "existingSecret": "pm-jwt", "key": "hs256"}}},
    },
    "mtls+token-cert-manager": {"auth": {"mode": "mtls+token"}, "tls": {"certManager": CERT_MANAGER}},
    "none": {
        "auth": {"mode": "none", "insecureNoAuth": True},
        "tls": {"generate": {"enabled": False}},
        "p2p": {"psk": {"enabled": False}},
    },
    "network-policy": {"networkPolicy": {"enabled": True, "nodeCIDRs": ["10.0.0.0/16", "fd00::/64"]}},
    "monitoring": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
        "prometheusRule": {"enabled": True, "alertLabels": {"team": "platform"}},
        "grafanaDashboard": {"enabled": True},
        "tls": {"existingSecret": "pm-tls", "crl": {"existingSecret": "pm-crl"}},
    },
    "options": {
        "hostNetwork": True,
        "dataDir": {"type": "emptyDir"},
        "containerd": {
            "restoreOnStop": False,
            "contentDir": "",
            "registries": [],
            "configPath": "/etc/containerd/hosts.d",
            "keepExistingMirrors": True,
            "dialTimeout": "none",
        },
        "ports": {"registry": 30500, "router": 30501, "metrics": 30502},
        "fullnameOverride": "pm",
        "hostFiles": {"image": {"repository": "busybox", "tag": "1.36"}, "path": "/var/lib/pm-certs"},
        "extraEnv": [{"name": "RUST_BACKTRACE", "value": "1"}],
        "maxUnavailable": "10%",
        "p2p": {"psk": {"existingSecret": "pm-psk", "key": "swarm.key"}},
        "image": {"digest": "sha256:" + "ab" * 32},
        "mirror": {"maxEgressBps": 100000000, "maxConcurrentUploads": 0, "resolveTags": False},
    },
}


def merged(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merged(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


_chart = None
_cache: dict[str, dict[str, str]] = {}


def chart():
    global _chart
    if _chart is None:
        _chart = helm_python.Chart.load(str(CHART))
    return _chart


def render_raw(values: dict | None = None, **kw) -> dict[str, str]:
    """Template path -> rendered text (raises HelmValuesError / HelmRenderError)."""
    key = json.dumps([values or {}, kw], sort_keys=True)
    if key not in _cache:
        _cache[key] = chart().render(
            copy.deepcopy(values or {}),
            name=kw.get("name", RELEASE),
            namespace=kw.get("namespace", NAMESPACE),
            is_install=True,
        )
    return _cache[key]


def render(values: dict | None = None, **kw) -> list[dict]:
    """Every manifest the chart renders, parsed (NOTES.txt left out)."""
    docs = []
    for path, text in sorted(render_raw(values, **kw).items()):
        if not path.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append(doc)
    return docs


def notes(values: dict | None = None) -> str:
    return render_raw(values)[f"{CHART.name}/templates/NOTES.txt"]


def find(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def daemonset(values: dict | None = None) -> dict:
    return one(render(values), "DaemonSet")


def pod_spec(values: dict | None = None) -> dict:
    return daemonset(values)["spec"]["template"]["spec"]


def container(spec: dict, name: str, init: bool = False) -> dict:
    group = spec.get("initContainers" if init else "containers", [])
    found = [c for c in group if c["name"] == name]
    assert found, f"no {'init ' if init else ''}container {name}: {[c['name'] for c in group]}"
    return found[0]


def args_map(args: list[str]) -> dict[str, list[str]]:
    """`--flag=value` and bare `--flag` into flag -> [values] (repeatable flags keep order)."""
    out: dict[str, list[str]] = {}
    for a in args:
        if not a.startswith("--"):
            continue
        flag, _, value = a.partition("=")
        out.setdefault(flag, []).append(value)
    return out


def mounts(c: dict) -> dict[str, dict]:
    return {m["name"]: m for m in c.get("volumeMounts", [])}


def volumes(spec: dict) -> dict[str, dict]:
    return {v["name"]: v for v in spec["volumes"]}


def peermirror_bin() -> Path | None:
    """The built binary: $PEERMIRROR_BIN (must exist when set) or target/debug/peermirror."""
    env = os.environ.get("PEERMIRROR_BIN")
    if env:
        path = Path(env)
        if not path.is_absolute():
            path = REPO / path
        assert path.is_file(), f"PEERMIRROR_BIN={env} does not exist: build it with cargo build"
        return path
    path = REPO / "target" / "debug" / "peermirror"
    return path if path.is_file() else None


@pytest.fixture
def binary() -> Path:
    path = peermirror_bin()
    if path is None:
        pytest.skip("no target/debug/peermirror (cargo build) and PEERMIRROR_BIN unset")
    return path
