//! A rate-limited TCP proxy in front of the upstream (`tests/tools/throttle_proxy.py`): one
//! token bucket shared by every connection caps the upstream's egress, like a WAN link (or,
//! with [`RateProxy::start_only`], the connections that asked for one blob).

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::Duration;

use tempfile::TempDir;

use super::process::{
    kill_child, log_file, new_temp_dir, send_sigterm, tail, wait_child, wait_until,
};

/// `python3 tests/tools/throttle_proxy.py`, stopped by PID on Drop.
pub struct RateProxy {
    port: u16,
    child: Option<Child>,
    stats: PathBuf,
    log: PathBuf,
    _dir: TempDir,
}

impl RateProxy {
    /// A proxy on 127.0.0.1 to `upstream` (`host:port`) sending at most `rate` bytes/s back,
    /// all connections together.
    pub fn start(upstream: &str, rate: u64) -> RateProxy {
        RateProxy::spawn(upstream, rate, None)
    }

    /// Like [`RateProxy::start`], but only connections whose requests contained `needle` (a
    /// digest's hex, say) are capped; the others pass at full speed.
    pub fn start_only(upstream: &str, rate: u64, needle: &str) -> RateProxy {
        RateProxy::spawn(upstream, rate, Some(needle))
    }

    fn spawn(upstream: &str, rate: u64, only: Option<&str>) -> RateProxy {
        let dir = new_temp_dir("pm-e2e-proxy-");
        let port_file = dir.path().join("port");
        let stats = dir.path().join("stats.json");
        let log = dir.path().join("proxy.log");
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/tools/throttle_proxy.py");
        let (out, err) = log_file(&log);
        let mut cmd = Command::new("python3");
        cmd.arg(&script)
            .args(["--listen", "127.0.0.1:0", "--upstream", upstream])
            .args(["--rate", &rate.to_string()])
            .arg("--port-file")
            .arg(&port_file)
            .arg("--stats-file")
            .arg(&stats);
        if let Some(needle) = only {
            cmd.args(["--only", needle]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn python3 throttle_proxy.py");
        let mut proxy = RateProxy {
            port: 0,
            child: Some(child),
            stats,
            log,
            _dir: dir,
        };
        let up = wait_until(Duration::from_secs(15), || port_file.exists());
        assert!(
            up,
            "throttle proxy did not start:\n{}",
            tail(&proxy.log, 20)
        );
        proxy.port = fs::read_to_string(&port_file)
            .expect("read port file")
            .trim()
            .parse()
            .expect("port number");
        proxy
    }

    /// `127.0.0.1:PORT`: the upstream host as containerd names it in image references.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.host())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The proxy's counters (rewritten every 200 ms): `bytes_from_upstream`,
    /// `bytes_to_upstream`, `connections`, `open`, and `closed` (one record per closed
    /// connection: `requests` ["GET /v2/..."], `up`, `down` bytes).
    pub fn stats(&self) -> serde_json::Value {
        thread::sleep(Duration::from_millis(300));
        let text = fs::read_to_string(&self.stats).unwrap_or_default();
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
    }

    /// Bytes the upstream sent through the proxy so far.
    pub fn bytes_from_upstream(&self) -> u64 {
        self.stats()["bytes_from_upstream"].as_u64().unwrap_or(0)
    }

    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log, n)
    }
}

impl Drop for RateProxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            send_sigterm(child.id());
            if wait_child(&mut child, Duration::from_secs(5)).is_none() {
                kill_child(&mut child);
            }
        }
        if thread::panicking() {
            eprintln!(
                "--- throttle proxy log (last 10 lines) ---\n{}",
                tail(&self.log, 10)
            );
        }
    }
}
