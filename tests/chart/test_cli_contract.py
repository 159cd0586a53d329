"""The chart against the real `peermirror` binary (target/debug/peermirror, or $PEERMIRROR_BIN):
the flags it renders parse, `configure` writes the hosts.toml the chart means and the preStop
hook restores the originals, and the daemon serves mTLS / token auth with the certificate,
token and DHT key the chart generates."""

from __future__ import annotations

import base64
import http.client
import socket
import ssl
import subprocess
import time
import tomllib
from pathlib import Path

import pytest

from conftest import SCENARIOS, args_map, container, mounts, one, pod_spec, render, volumes


def rendered_args(values, name, init=False):
    c = container(pod_spec(values), name, init=init)
    return list(c["args"]), c


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_rendered_flags_parse(binary, scenario):
    """clap parses (and type-checks) every flag before acting on --help, so this catches a
    flag the binary does not have or a value it refuses."""
    values = SCENARIOS[scenario]
    run, _ = rendered_args(values, "peermirror")
    run = [a.replace("$(NODE_IP)", "10.0.0.5") for a in run]
    configure, _ = rendered_args(values, "configure", init=True)
    for args in (run, configure):
        proc = subprocess.run([str(binary), *args, "--help"], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, f"{args[0]}: {proc.stderr}"
    restore = container(pod_spec(values), "peermirror").get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
    if restore:
        assert restore[0] == "peermirror"
        proc = subprocess.run([str(binary), *restore[1:], "--help"], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr


def secret_files(docs, name, dest: Path):
    dest.mkdir(parents=True, exist_ok=True)
    for key, value in one(docs, "Secret", name)["data"].items():
        (dest / key).write_bytes(base64.b64decode(value))


@pytest.mark.parametrize("scenario", ["default", "token-generated", "none", "options"])
def test_configure_then_restore(binary, tmp_path, scenario):
    node = tmp_path / "node"
    config = node / "etc" / "containerd" / "certs.d"
    host = node / "etc" / "peermirror" / "certs"
    values = {**SCENARIOS[scenario], "hostFiles": {**SCENARIOS[scenario].get("hostFiles", {}), "path": str(host)}}
    values["containerd"] = {**SCENARIOS[scenario].get("containerd", {}), "configPath": str(config)}
    docs = render(values)
    args, _ = rendered_args(values, "configure", init=True)
    a = args_map(args)

    # What the node had before: a hosts.toml of its own for docker.io.
    original = 'server = "https://registry-1.docker.io"\n\n[host."https://corp-mirror.local"]\ncapabilities = ["pull"]\n'
    (config / "docker.io").mkdir(parents=True)
    (config / "docker.io" / "hosts.toml").write_text(original)
    # What the init containers provide: the host-files copy and the token Secret volume.
    host.mkdir(parents=True)
    for f in ("ca.crt", "client.crt", "client.key"):
        (host / f).write_text("pem\n")
    secrets = tmp_path / "secrets"
    if "--token-file" in a:
        (secrets / "token").mkdir(parents=True)
        (secrets / "token" / "token").write_text("s3cr3t-token\n")
    args = [x.replace("/secrets/", f"{secrets}/") for x in args]

    proc = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    registries = a.get("--registry") or []
    dirs = [r.split("://", 1)[1] for r in registries] or ["_default"]
    mirror = a["--mirror"][0]
    for d in dirs:
        doc = tomllib.loads((config / d / "hosts.toml").read_text())
        first = next(iter(doc["host"]))
        assert first == mirror
        table = doc["host"][mirror]
        assert table["capabilities"] == ["pull", "resolve"]
        if mirror.startswith("https://"):
            assert table["ca"] == f"{host}/ca.crt"
        else:
            assert "ca" not in table
        if "--client-cert" in a:
            assert table["client"] == [[f"{host}/client.crt", f"{host}/client.key"]]
        else:
            assert "client" not in table
        if "--token-file" in a:
            assert table["header"]["Authorization"] == "Bearer s3cr3t-token"
            assert (config / d / "hosts.toml").stat().st_mode & 0o077 == 0
        else:
            assert "header" not in table

    # The preStop hook puts everything back (or, without it, the same command by hand).
    restore = container(pod_spec(values), "peermirror").get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
    restore = restore[1:] if restore else ["configure", f"--config-path={config}", "--restore"]
    proc = subprocess.run([str(binary), *restore], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert (config / "docker.io" / "hosts.toml").read_text() == original
    leftovers = [p for p in config.rglob("*") if p.is_file() and p != config / "docker.io" / "hosts.toml"]
    assert leftovers == []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_daemon(binary, values, tmp_path):
    """Run the chart's `peermirror run` flags with the chart's generated Secrets, on loopback
    ports and with no containerd (the registry endpoint still answers /v2/)."""
    docs = render(values)
    secrets = tmp_path / "secrets"
    generated = {d["metadata"]["name"] for d in docs if d["kind"] == "Secret"}
    for name, mount in (("peermirror-tls", "tls"), ("peermirror-p2p-psk", "p2p"), ("peermirror-token", "token")):
        if name in generated:
            secret_files(docs, name, secrets / mount)
    ports = {"registry": free_port(), "metrics": free_port(), "router": free_port()}
    args = []
    for a in container(pod_spec(values), "peermirror")["args"]:
        flag = a.split("=", 1)[0]
        if flag == "--containerd-content-dir":
            continue
        a = {
            "--registry-addr": f"--registry-addr=127.0.0.1:{ports['registry']}",
            "--metrics-addr": f"--metrics-addr=127.0.0.1:{ports['metrics']}",
            "--router-addr": f"--router-addr=127.0.0.1:{ports['router']}",
            "--advertise-addr": "--advertise-addr=127.0.0.1",
            "--bootstrap": "--bootstrap=none",
            "--data-dir": f"--data-dir={tmp_path / 'data'}",
            "--containerd-sock": f"--containerd-sock={tmp_path / 'no-containerd.sock'}",
            "--log-format": "--log-format=text",
        }.get(flag, a)
        args.append(a.replace("/secrets/", f"{secrets}/"))
    log = open(tmp_path / "daemon.log", "w")
    proc = subprocess.Popen([str(binary), *args], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while True:
        assert proc.poll() is None, (tmp_path / "daemon.log").read_text()[-3000:]
        try:
            conn = http.client.HTTPConnection("127.0.0.1", ports["metrics"], timeout=1)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, (tmp_path / "daemon.log").read_text()[-3000:]
        time.sleep(0.1)
    return proc, ports["registry"], secrets


def get_v2(port, secrets, client_cert=True, token=None):
    ctx = ssl.create_default_context(cafile=str(secrets / "tls" / "ca.crt"))
    if client_cert:
        ctx.load_cert_chain(str(secrets / "tls" / "tls.crt"), str(secrets / "tls" / "tls.key"))
    # containerd dials https://127.0.0.1:<port>: the certificate must be good for that address.
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    conn.request("GET", "/v2/", headers=headers)
    return conn.getresponse().status


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_daemon_accepts_the_generated_certificate(binary, tmp_path):
    proc, port, secrets = start_daemon(binary, {}, tmp_path)
    try:
        assert get_v2(port, secrets) == 200
        with pytest.raises((ssl.SSLError, ConnectionError)):
            get_v2(port, secrets, client_cert=False)
    finally:
        stop(proc)


def test_daemon_accepts_the_generated_token(binary, tmp_path):
    proc, port, secrets = start_daemon(binary, SCENARIOS["token-generated"], tmp_path)
    try:
        token = (secrets / "token" / "token").read_text().strip()
        assert get_v2(port, secrets, client_cert=False, token=token) == 200
        assert get_v2(port, secrets, client_cert=False, token="wrong") == 401
    finally:
        stop(proc)


def test_readme_recipe_with_peermirror_certs(binary, tmp_path):
    """The README's existingSecret recipe: `peermirror certs` makes the CA, node certificate
    and CRL; mounted where the chart mounts the Secrets, the daemon serves mTLS with them."""
    pki = tmp_path / "pki"
    for args in (["init-ca"], ["issue", "--name", "peermirror", "--ip", "127.0.0.1", "--dns", "peermirror.kube-system.svc", "--days", "365"]):
        proc = subprocess.run([str(binary), "certs", args[0], "--dir", str(pki), *args[1:]], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
    tls = tmp_path / "secrets" / "tls"
    tls.mkdir(parents=True)
    (tls / "tls.crt").write_bytes((pki / "peermirror.crt").read_bytes())
    (tls / "tls.key").write_bytes((pki / "peermirror.key").read_bytes())
    (tls / "ca.crt").write_bytes((pki / "ca.crt").read_bytes())
    (tmp_path / "secrets" / "crl").mkdir()
    (tmp_path / "secrets" / "crl" / "crl.pem").write_bytes((pki / "crl.pem").read_bytes())
    values = {"tls": {"existingSecret": "peermirror-tls", "crl": {"existingSecret": "peermirror-crl"}}}
    proc, port, secrets = start_daemon(binary, values, tmp_path)
    try:
        assert get_v2(port, secrets) == 200
    finally:
        stop(proc)


def test_configure_warns_about_containerd_2_colon_config_path(binary, tmp_path):
    """containerd.configFile: the init container and the daemon get --containerd-config, the
    file's directory mounted read-only; `configure` prints the containerd 2.2+ trap on stderr
    (a colon-separated config_path), and stays quiet with a single directory."""
    spec = pod_spec({})
    vols = volumes(spec)
    assert vols["containerd-config-file"]["hostPath"] == {"path": "/etc/containerd", "type": "DirectoryOrCreate"}
    for name, init in (("configure", True), ("peermirror", False)):
        c = container(spec, name, init=init)
        assert args_map(c["args"])["--containerd-config"] == ["/host/etc/containerd/config.toml"]
        m = mounts(c)["containerd-config-file"]
        assert m == {"name": "containerd-config-file", "mountPath": "/host/etc/containerd", "readOnly": True}
    off = pod_spec({"containerd": {"configFile": ""}})
    assert "containerd-config-file" not in volumes(off)
    assert "--containerd-config" not in args_map(container(off, "configure", init=True)["args"])

    config = tmp_path / "certs.d"
    values = {**SCENARIOS["none"], "containerd": {**SCENARIOS["none"].get("containerd", {}), "configPath": str(config)}}
    args, _ = rendered_args(values, "configure", init=True)
    file = tmp_path / "config.toml"
    args = [a.replace("/host/etc/containerd/config.toml", str(file)) for a in args]
    images = '[plugins."io.containerd.cri.v1.images".registry]'
    for config_path, warns in ((f"{config}:/etc/docker/certs.d", True), (str(config), False)):
        file.write_text(f'version = 3\n\n{images}\n  config_path = "{config_path}"\n')
        proc = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
        assert ("CONTAINERD WILL IGNORE THE MIRROR" in proc.stderr) == warns, proc.stderr
        assert (config / "docker.io" / "hosts.toml").is_file()
