"""The host-files shell script, as rendered, run with /bin/sh against temporary directories:
it copies the TLS files containerd needs onto the "node", replaces them when the Secret
changes, stops on SIGTERM, and removes them only once no hosts.toml names them."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import time

import pytest

from conftest import container, pod_spec


def script(tmp_path, values_extra=None, attempts=None):
    host = tmp_path / "node" / "etc" / "peermirror" / "certs"
    config = tmp_path / "node" / "etc" / "containerd" / "certs.d"
    config.mkdir(parents=True)
    values = {"hostFiles": {"path": str(host), "syncIntervalSeconds": 5}, "containerd": {"configPath": str(config)}}
    values.update(values_extra or {})
    c = container(pod_spec(values), "host-files-init", init=True)
    text = c["command"][2]
    assert c["command"][:2] == ["/bin/sh", "-c"] and c["command"][3:] == ["host-files", "sync"]
    # The Secret volume: the kubelet's layout, files behind ..data symlinks.
    secrets = tmp_path / "secrets" / "tls"
    data = secrets / "..2024_01_01"
    data.mkdir(parents=True)
    for name, content in (("ca.crt", "CA1\n"), ("tls.crt", "CERT1\n"), ("tls.key", "KEY1\n")):
        (data / name).write_text(content)
    os.symlink(data.name, secrets / "..data")
    for name in ("ca.crt", "tls.crt", "tls.key"):
        os.symlink(f"..data/{name}", secrets / name)
    assert '"/secrets/tls"' in text
    text = text.replace('"/secrets/tls"', f'"{secrets}"')
    if attempts is not None:
        text = text.replace('-lt 30 ]', f'-lt {attempts} ]')
    return text, host, config, data


def sh(text, action, **kw):
    return subprocess.run(["/bin/sh", "-c", text, "host-files", action], capture_output=True, text=True, timeout=30, **kw)


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_sync_copies_with_tight_modes(tmp_path):
    text, host, _, data = script(tmp_path)
    out = sh(text, "sync")
    assert out.returncode == 0, out.stderr
    assert (host / "ca.crt").read_text() == "CA1\n"
    assert (host / "client.crt").read_text() == "CERT1\n"
    assert (host / "client.key").read_text() == "KEY1\n"
    assert mode(host) == 0o700
    assert mode(host / "ca.crt") == 0o644
    assert mode(host / "client.crt") == 0o600 and mode(host / "client.key") == 0o600
    assert not list(host.glob("*.tmp"))
    # Nothing changed: nothing written.
    again = sh(text, "sync")
    assert again.returncode == 0 and again.stdout == ""
    # A renewal (the kubelet swaps ..data) reaches the node's copy.
    (data / "tls.crt").write_text("CERT2\n")
    (data / "tls.key").write_text("KEY2\n")
    renewed = sh(text, "sync")
    assert "client.crt" in renewed.stdout and "client.key" in renewed.stdout and "ca.crt" not in renewed.stdout
    assert (host / "client.crt").read_text() == "CERT2\n" and (host / "client.key").read_text() == "KEY2\n"


def test_token_mode_copies_only_the_ca(tmp_path):
    text, host, _, _ = script(tmp_path, {"auth": {"mode": "token"}})
    assert sh(text, "sync").returncode == 0
    assert sorted(p.name for p in host.iterdir()) == ["ca.crt"]


def test_missing_secret_file_fails_the_init_container(tmp_path):
    text, host, _, data = script(tmp_path)
    (data / "ca.crt").unlink()
    out = sh(text, "sync")
    assert out.returncode != 0


def test_loop_syncs_then_stops_on_sigterm(tmp_path):
    text, host, _, _ = script(tmp_path)
    proc = subprocess.Popen(["/bin/sh", "-c", text, "host-files", "loop"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while not (host / "client.key").exists():
            assert time.monotonic() < deadline, "loop did not copy the files"
            time.sleep(0.05)
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=3) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("referenced", [False, True])
def test_cleanup_only_when_no_hosts_toml_names_the_files(tmp_path, referenced):
    text, host, config, _ = script(tmp_path, attempts=2)
    assert sh(text, "sync").returncode == 0
    (config / "docker.io").mkdir()
    if referenced:
        (config / "docker.io" / "hosts.toml").write_text(f'[host."https://127.0.0.1:5000"]\nca = "{host}/ca.crt"\n')
    else:
        (config / "docker.io" / "hosts.toml").write_text('server = "https://registry-1.docker.io"\n')
    out = sh(text, "cleanup")
    assert out.returncode == 0, out.stderr
    left = sorted(p.name for p in host.iterdir()) if host.exists() else []
    if referenced:
        assert left == ["ca.crt", "client.crt", "client.key"]
        assert "leaving" in out.stderr
    else:
        assert not host.exists()
