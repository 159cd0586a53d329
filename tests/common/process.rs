//! Processes and polling: bounded waits, commands with a deadline, kill by PID, logs.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub(super) const POLL: Duration = Duration::from_millis(50);
/// Upper bound for one short-lived helper command (skopeo, ctr, ...).
pub(super) const COMMAND_TIMEOUT: Duration = Duration::from_secs(180);

/// A TCP port that was free a moment ago on 127.0.0.1, never one this process handed out
/// before: the kernel may give a just-released port again, and two daemons of one test must
/// not be told to bind the same one.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<BTreeSet<u16>> = std::sync::Mutex::new(BTreeSet::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1000 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        if given.insert(port) {
            return port;
        }
    }
    panic!("no fresh free port after 1000 tries");
}

/// `PROGRAM` run inside network namespace `netns` when given (`ip netns exec NS PROGRAM`: `ip`
/// execs the program after entering the namespace, so the child's PID is the program's and
/// killing it by PID stops the program), otherwise `PROGRAM` itself.
pub fn command_in(netns: Option<&str>, program: impl AsRef<OsStr>) -> Command {
    match netns {
        Some(ns) => {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns]).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

/// Polls `f` every 50 ms until it returns true or `timeout` has passed.
/// Returns whether it became true.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(POLL);
    }
}

/// Async flavour of [`wait_until`] for conditions that need `.await`.
pub async fn wait_until_async<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Last `n` lines of a log file, for failure reports.
pub fn tail(path: &Path, n: usize) -> String {
    let text = fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned());
    match text {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// Runs a command to completion with a time limit, capturing its output.
/// On timeout the process is killed and the returned status is a failure.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    // Drain both pipes in threads so a chatty child cannot block on a full pipe.
    let mut out = child.stdout.take().expect("stdout pipe");
    let mut err = child.stderr.take().expect("stderr pipe");
    let out_reader = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_reader = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let (status, timed_out) = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break (status, false);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            break (child.wait().expect("wait after kill"), true);
        }
        thread::sleep(Duration::from_millis(20));
    };
    let stdout = out_reader.join().unwrap_or_default();
    let mut stderr = err_reader.join().unwrap_or_default();
    if timed_out {
        stderr.extend_from_slice(format!("\n[harness: killed after {timeout:?}]\n").as_bytes());
    }
    Output {
        status,
        stdout,
        stderr,
    }
}

pub(super) fn output_text(out: &Output) -> String {
    format!(
        "status: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Sends SIGTERM to a PID (std only offers SIGKILL; `kill(1)` is in procps).
pub(super) fn send_sigterm(pid: u32) {
    let out = run_with_timeout(
        Command::new("kill").args(["-TERM", &pid.to_string()]),
        Duration::from_secs(10),
    );
    assert!(
        out.status.success(),
        "kill -TERM {pid}: {}",
        output_text(&out)
    );
}

/// SIGKILL and reap; fine to call on an already exited child.
pub(super) fn kill_child(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits at most `timeout` for a child to exit.
pub(super) fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

pub(super) fn log_file(path: &Path) -> (Stdio, Stdio) {
    let file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open log {}: {e}", path.display()));
    let clone = file.try_clone().expect("clone log fd");
    (Stdio::from(file), Stdio::from(clone))
}

pub(super) fn new_temp_dir(prefix: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(std::env::temp_dir())
        .expect("create temp dir")
}

/// Runs `peermirror ARGS...` (no PEERMIRROR_* from the environment).
pub fn peermirror_cli(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_peermirror"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PEERMIRROR_") {
            cmd.env_remove(key);
        }
    }
    run_with_timeout(cmd.args(args), Duration::from_secs(60))
}

/// Status, stdout and stderr of a finished command, for failure reports.
pub fn describe_output(out: &Output) -> String {
    output_text(out)
}

/// A log file as text without ANSI colour codes ("" when unreadable).
pub fn read_log(path: &Path) -> String {
    strip_ansi_codes(&String::from_utf8_lossy(
        &fs::read(path).unwrap_or_default(),
    ))
}

/// Removes ANSI escape sequences (`ESC [ params final`): peermirror's text
/// log is coloured even when written to a file.
pub fn strip_ansi_codes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// Lines of `text` containing every one of `needles`.
pub fn lines_with<'a>(text: &'a str, needles: &[&str]) -> Vec<&'a str> {
    text.lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .collect()
}

/// The last `n` non-empty lines of `text` (ctr prints its error at the end).
pub fn last_lines_of(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The last `n` lines of `log` containing any of `needles` (for failure reports).
pub fn grep(log: &str, needles: &[&str], n: usize) -> String {
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| needles.iter().any(|k| l.contains(k)))
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
