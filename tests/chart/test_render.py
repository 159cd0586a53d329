"""Every scenario renders, passes `helm lint --strict`, and every manifest passes
kubernetes-validate's strict schema check for each supported Kubernetes version."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import helm_python
import kubernetes_validate
import pytest
import yaml

from conftest import CHART, CRD_KINDS, KUBE_VERSIONS, SCENARIOS, render

EXPECTED_KINDS = {
    "DaemonSet", "Service", "ServiceAccount", "Secret", "NetworkPolicy", "ConfigMap",
    "Certificate", "ServiceMonitor", "PrometheusRule",
}


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("kube", KUBE_VERSIONS)
def test_manifests_validate_strictly(scenario, kube):
    docs = render(SCENARIOS[scenario])
    assert docs, "nothing rendered"
    checked = 0
    for doc in docs:
        kind, api = doc["kind"], doc["apiVersion"]
        assert kind in EXPECTED_KINDS, f"unexpected kind {kind}"
        assert doc["metadata"].get("name"), f"{kind} without a name"
        assert doc["metadata"].get("namespace") == "kube-system", f"{kind} {doc['metadata']['name']} not namespaced"
        if (api, kind) in CRD_KINDS:
            # kubernetes-validate has no schema for CRDs: skipped here on purpose, their
            # content is asserted in test_properties.py.
            continue
        try:
            kubernetes_validate.validate(doc, kube, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{kind}/{doc['metadata']['name']} invalid for Kubernetes {kube}: {e.message} at {list(e.path)}")
        checked += 1
    assert checked >= 3


def test_skipped_kinds_are_exactly_the_crds():
    """The skip list is needed (no bundled schema for these kinds) and every entry is rendered."""
    seen = set()
    for values in SCENARIOS.values():
        seen |= {(d["apiVersion"], d["kind"]) for d in render(values)}
    assert CRD_KINDS <= seen
    for api, kind in CRD_KINDS:
        with pytest.raises(kubernetes_validate.SchemaNotFoundError):
            kubernetes_validate.validate({"apiVersion": api, "kind": kind, "metadata": {"name": "x"}}, "1.33.0", strict=True)


def _cli() -> str:
    exe = Path(sys.executable).parent / "kubernetes-validate"
    return str(exe) if exe.exists() else (shutil.which("kubernetes-validate") or "kubernetes-validate")


@pytest.mark.parametrize("kube", KUBE_VERSIONS)
def test_kubernetes_validate_cli_strict(tmp_path, kube):
    """The command-line tool, as a person would run it, on the default and option renders."""
    files = []
    for scenario in ("default", "options", "network-policy", "token-generated"):
        docs = [d for d in render(SCENARIOS[scenario]) if (d["apiVersion"], d["kind"]) not in CRD_KINDS]
        path = tmp_path / f"{scenario}.yaml"
        path.write_text(yaml.safe_dump_all(docs))
        files.append(str(path))
    proc = subprocess.run([_cli(), "-k", kube, "--strict", *files], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "did not validate" not in proc.stdout


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_lint_strict(scenario):
    for kube in KUBE_VERSIONS:
        report = helm_python.lint(str(CHART), SCENARIOS[scenario], strict=True, kube_version="v" + kube)
        assert report["errors"] == [], report
        # Severity 2 is a warning (fails `helm lint --strict`), 3 an error; 1 is info.
        assert [m for m in report["messages"] if m["severity"] >= 2] == [], report["messages"]


def test_lint_defaults_passes_with_only_info():
    report = helm_python.lint(str(CHART), strict=True, kube_version="v1.33.0")
    assert report["total_charts_linted"] == 1
    assert report["errors"] == []
