"""values.yaml, values.schema.json and the README's values table agree."""

from __future__ import annotations

import json
import tomllib

import yaml

import values_table
from conftest import CHART, REPO

VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
SCHEMA = json.loads((CHART / "values.schema.json").read_text())


def schema_node(dotted: str) -> dict:
    node = SCHEMA
    for part in dotted.split("."):
        assert node.get("type") == "object", f"{dotted}: schema has no object above {part}"
        assert part in node.get("properties", {}), f"{dotted}: not in values.schema.json"
        node = node["properties"][part]
    return node


def test_every_value_is_documented():
    docs = [k for k, _ in values_table.documented()]
    assert len(docs) == len(set(docs)), "a value is documented twice"
    for leaf in values_table.leaves(VALUES):
        assert any(leaf == d or leaf.startswith(d + ".") for d in docs), f"{leaf} has no `# --` description in values.yaml"
    for key, desc in values_table.documented():
        assert desc, f"{key}: empty description"
        values_table.lookup(VALUES, key)  # documented keys exist


def test_every_value_is_in_the_schema_and_nothing_else():
    for key, _ in values_table.documented():
        schema_node(key)  # each documented value (free-form maps below it are typed by the schema)

    def walk(node, path):
        if node.get("type") == "object" and "properties" in node:
            for k, sub in node["properties"].items():
                if not path and k == "global":
                    continue
                dotted = f"{path}.{k}" if path else k
                values_table.lookup(VALUES, dotted)  # no schema entry without a default
                walk(sub, dotted)

    walk(SCHEMA, "")
    assert SCHEMA["additionalProperties"] is False


def test_schema_closes_every_fixed_object():
    """Objects with fixed keys reject unknown ones; free-form maps (labels, resources) are typed."""
    open_ok = {"resources", "helperResources"}

    def walk(node, path):
        if node.get("type") == "object" and "properties" in node:
            if path not in open_ok:
                assert node["additionalProperties"] is False, f"{path or '<root>'} accepts unknown keys"
            for k, sub in node["properties"].items():
                walk(sub, f"{path}.{k}" if path else k)

    walk(SCHEMA, "")


def test_enums():
    assert schema_node("auth.mode")["enum"] == ["mtls", "token", "mtls+token", "none"]
    assert schema_node("tls.crl.expired")["enum"] == ["deny", "warn"]
    assert schema_node("logging.format")["enum"] == ["text", "json"]
    assert schema_node("dataDir.type")["enum"] == ["hostPath", "emptyDir"]


def test_readme_values_table_is_current():
    assert values_table.readme_table() == values_table.table(), (
        "charts/peermirror/README.md's values table is stale: run python3 tests/chart/values_table.py --write"
    )


def test_readme_covers_the_brief():
    text = (CHART / "README.md").read_text()
    for needle in (
        "config_path", "peermirror status", "helm upgrade", "helm uninstall", "auth.mode=token",
        "auth.mode=mtls+token", "auth.insecureNoAuth=true", "tls.certManager.enabled=true",
        "tls.existingSecret=", "preStop", "hostPath",
    ):
        assert needle in text, needle


def test_chart_metadata():
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert meta["apiVersion"] == "v2"
    assert VALUES["image"]["repository"] == "localhost/peermirror"  # what scripts/build-image.sh tags
    assert VALUES["image"]["tag"] == ""  # defaults to appVersion


def test_app_version_is_the_crate_version():
    """The default image tag is appVersion, and scripts/build-image.sh tags the image with the
    crate's version: they must agree, or `helm install` asks for an image nobody built."""
    cargo = tomllib.loads((REPO / "Cargo.toml").read_text())
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert meta["appVersion"] == cargo["package"]["version"], (
        f"Chart.yaml appVersion {meta['appVersion']!r} != Cargo.toml version {cargo['package']['version']!r}"
    )
