"""The values table of charts/peermirror/README.md, made from values.yaml.

Each documented value is a key preceded by a `# -- description` comment (continued by plain
`#` lines); its default is the key's value in values.yaml. The README holds the table between
the `<!-- values-table:start -->` and `<!-- values-table:end -->` markers;
test_docs.py checks it is current.

    python3 tests/chart/values_table.py           # print the table
    python3 tests/chart/values_table.py --write   # rewrite it in the README
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import yaml

CHART = Path(__file__).resolve().parents[2] / "charts" / "peermirror"
START = "<!-- values-table:start -->"
END = "<!-- values-table:end -->"

_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_]+):(?: |$)")
_DOC = re.compile(r"^ *# -- ?(?P<text>.*)$")
_MORE = re.compile(r"^ *#(?: (?P<text>.*))?$")


def documented(values_path: Path = CHART / "values.yaml") -> list[tuple[str, str]]:
    """(dotted key, description) for every `# --` documented key, in file order."""
    out: list[tuple[str, str]] = []
    stack: list[tuple[int, str]] = []  # (indent, key) of the enclosing mappings
    pending: list[str] | None = None
    for line in values_path.read_text().splitlines():
        if m := _DOC.match(line):
            pending = [m.group("text").strip()]
            continue
        if (m := _MORE.match(line)) and line.lstrip().startswith("#"):
            if pending is not None:
                pending.append((m.group("text") or "").strip())
            continue
        m = _KEY.match(line)
        if not m:
            continue  # list items and blank lines
        indent = len(m.group("indent"))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([k for _, k in stack] + [m.group("key")])
        stack.append((indent, m.group("key")))
        if pending is not None:
            out.append((path, " ".join(t for t in pending if t)))
            pending = None
    return out


def lookup(values: dict, dotted: str):
    node = values
    for part in dotted.split("."):
        node = node[part]
    return node


def leaves(values, prefix: str = "") -> list[str]:
    """Every leaf key path; an empty mapping or any list counts as a leaf."""
    if isinstance(values, dict) and values:
        out: list[str] = []
        for k, v in values.items():
            out.extend(leaves(v, f"{prefix}.{k}" if prefix else k))
        return out
    return [prefix]


def render_default(value) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    return "`" + text.replace("|", "\\|") + "`"


def table(values_path: Path = CHART / "values.yaml") -> str:
    values = yaml.safe_load(values_path.read_text())
    rows = ["| Key | Default | Description |", "|---|---|---|"]
    for key, desc in documented(values_path):
        desc = desc.replace("|", "\\|")
        rows.append(f"| `{key}` | {render_default(lookup(values, key))} | {desc} |")
    return "\n".join(rows) + "\n"


def readme_table(readme: Path = CHART / "README.md") -> str:
    text = readme.read_text()
    start, end = text.index(START) + len(START), text.index(END)
    return text[start:end].strip("\n") + "\n"


def write(readme: Path = CHART / "README.md") -> None:
    text = readme.read_text()
    start, end = text.index(START) + len(START), text.index(END)
    readme.write_text(text[:start] + "\n" + table() + text[end:])


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write()
    else:
        sys.stdout.write(table())
