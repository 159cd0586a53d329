//! `peermirror configure` against a temp `config_path`: the files written, backups and `--restore`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use clap::Parser;
use peermirror::configure::{self, Action, ConfigureArgs, ConfigureError, Report};
use tempfile::TempDir;
use toml::Table;

#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    args: ConfigureArgs,
}

/// Parses real flags, with `--config-path` pointing at `dir`.
fn args(dir: &Path, flags: &[&str]) -> ConfigureArgs {
    let mut argv = vec![
        "peermirror-configure",
        "--config-path",
        dir.to_str().unwrap(),
    ];
    argv.extend_from_slice(flags);
    Cli::try_parse_from(argv).unwrap().args
}

fn run(dir: &Path, flags: &[&str]) -> Report {
    configure::run(&args(dir, flags)).unwrap()
}

fn hosts(dir: &Path, registry: &str) -> PathBuf {
    dir.join(registry).join("hosts.toml")
}

fn read_doc(path: &Path) -> Table {
    toml::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

fn host_keys(doc: &Table) -> Vec<String> {
    doc["host"].as_table().unwrap().keys().cloned().collect()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Every file under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_owned();
        if p.is_dir() {
            out.extend(tree(&p).into_iter().map(|f| format!("{name}/{f}")));
        } else {
            out.push(name);
        }
    }
    out.sort();
    out
}

#[test]
fn writes_one_file_per_registry_with_mirrors_in_order() {
    let tmp = TempDir::new().unwrap();
    let d = tmp.path();
    let report = run(
        d,
        &[
            "--mirror",
            "http://127.0.0.1:5001",
            "--mirror",
            "http://127.0.0.1:5000",
            "--registry",
            "https://ghcr.io",
            "--registry",
            "http://127.0.0.1:5700",
        ],
    );
    assert_eq!(report.entries.len(), 2);
    assert!(report.entries.iter().all(|e| e.action == Action::Wrote));
    assert_eq!(
        tree(d),
        [
            "127.0.0.1:5700/hosts.toml",
            "127.0.0.1:5700/hosts.toml.peermirror-none",
            "ghcr.io/hosts.toml",
            "ghcr.io/hosts.toml.peermirror-none",
        ]
    );
    let ghcr = read_doc(&hosts(d, "ghcr.io"));
    assert_eq!(ghcr["server"].as_str(), Some("https://ghcr.io"));
    assert_eq!(
        host_keys(&ghcr),
        ["http://127.0.0.1:5001", "http://127.0.0.1:5000"]
    );
    let m = &ghcr["host"]["http://127.0.0.1:5000"];
    assert_eq!(
        m["capabilities"],
        toml::Value::Array(vec!["pull".into(), "resolve".into()])
    );
    assert_eq!(m["dial_timeout"].as_str(), Some("200ms"));
    let local = read_doc(&hosts(d, "127.0.0.1:5700"));
    assert_eq!(local["server"].as_str(), Some("http://127.0.0.1:5700"));
    assert_eq!(mode(&hosts(d, "ghcr.io")), 0o644);
    let shown = report.to_string();
    assert!(
        shown.contains(hosts(d, "ghcr.io").to_str().unwrap()),
        "{shown}"
    );
}

#[test]
fn docker_io_server_is_registry_1_in_docker_io_dir() {
    let tmp = TempDir::new().unwrap();
    run(
        tmp.path(),
        &[
            "--mirror",
            "http://127.0.0.1:5000",
            "--registry",
            "https://docker.io",
        ],
    );
    let doc = read_doc(&hosts(tmp.path(), "docker.io"));
    assert_eq!(doc["server"].as_str(), Some("https://registry-1.docker.io"));
}

#[test]
fn no_registry_writes_default_without_server() {
    let tmp = TempDir::new().unwrap();
    run(
        tmp.path(),
        &["--mirror", "http://127.0.0.1:5000", "--dial-timeout", "0"],
    );
    assert_eq!(
        tree(tmp.path()),
        ["_default/hosts.toml", "_default/hosts.toml.peermirror-none"]
    );
    let doc = read_doc(&hosts(tmp.path(), "_default"));
    assert!(!doc.contains_key("server"));
    let m = doc["host"]["http://127.0.0.1:5000"].as_table().unwrap();
    assert!(!m.contains_key("dial_timeout"));
}

#[test]
fn token_goes_in_a_header_of_a_0600_file_and_nowhere_else() {
    let tmp = TempDir::new().unwrap();
    let secrets = TempDir::new().unwrap();
    let token_file = secrets.path().join("token");
    fs::write(&token_file, "\n  \n  tok-3x4mple.SECRET  \nsecond line\n").unwrap();
    let (ca, cert, key) = (
        secrets.path().join("ca.crt"),
        secrets.path().join("c.crt"),
        secrets.path().join("c.key"),
    );
    for f in [&ca, &cert, &key] {
        fs::write(f, "pem").unwrap();
    }
    let a = args(
        tmp.path(),
        &[
            "--mirror",
            "https://10.0.0.5:5443",
            "--registry",
            "https://ghcr.io",
            "--token-file",
            token_file.to_str().unwrap(),
            "--ca-file",
            ca.to_str().unwrap(),
            "--client-cert",
            cert.to_str().unwrap(),
            "--client-key",
            key.to_str().unwrap(),
        ],
    );
    let report = configure::run(&a).unwrap();
    let path = hosts(tmp.path(), "ghcr.io");
    assert_eq!(mode(&path), 0o600);
    let doc = read_doc(&path);
    let m = &doc["host"]["https://10.0.0.5:5443"];
    assert_eq!(
        m["header"]["Authorization"].as_str(),
        Some("Bearer tok-3x4mple.SECRET")
    );
    assert_eq!(m["ca"].as_str(), ca.to_str());
    let pair = toml::Value::Array(vec![
        cert.to_str().unwrap().into(),
        key.to_str().unwrap().into(),
    ]);
    assert_eq!(m["client"], toml::Value::Array(vec![pair]));
    for shown in [report.to_string(), format!("{report:?}"), format!("{a:?}")] {
        assert!(!shown.contains("SECRET"), "{shown}");
    }
    // No temp file (which could hold the token) is left behind.
    assert_eq!(
        tree(tmp.path()),
        ["ghcr.io/hosts.toml", "ghcr.io/hosts.toml.peermirror-none"]
    );
}

#[test]
fn backup_then_restore_gives_back_the_exact_original_and_removes_new_files() {
    let tmp = TempDir::new().unwrap();
    let d = tmp.path();
    fs::create_dir_all(d.join("ghcr.io")).unwrap();
    let original = b"# hand-written\nserver = \"https://ghcr.io\"\n\n[host.\"https://old\"]\n  capabilities = [\"pull\"]\n";
    fs::write(hosts(d, "ghcr.io"), original).unwrap();
    fs::set_permissions(hosts(d, "ghcr.io"), fs::Permissions::from_mode(0o640)).unwrap();
    let flags = [
        "--mirror",
        "http://127.0.0.1:5000",
        "--registry",
        "https://ghcr.io",
        "--registry",
        "https://quay.io",
    ];

    let report = run(d, &flags);
    assert_eq!(report.entries[0].action, Action::WroteAfterBackup);
    assert_eq!(
        fs::read(d.join("ghcr.io/hosts.toml.peermirror-backup")).unwrap(),
        original
    );
    assert_ne!(fs::read(hosts(d, "ghcr.io")).unwrap(), original);

    let report = run(d, &["--restore"]);
    let actions: Vec<_> = report
        .entries
        .iter()
        .map(|e| (e.path.clone(), e.action))
        .collect();
    assert_eq!(
        actions,
        [
            (hosts(d, "ghcr.io"), Action::Restored),
            (hosts(d, "quay.io"), Action::Removed)
        ]
    );
    assert_eq!(fs::read(hosts(d, "ghcr.io")).unwrap(), original);
    assert_eq!(mode(&hosts(d, "ghcr.io")), 0o640);
    assert_eq!(tree(d), ["ghcr.io/hosts.toml"]);

    // Idempotent.
    assert!(run(d, &["--restore"]).entries.is_empty());
    assert_eq!(fs::read(hosts(d, "ghcr.io")).unwrap(), original);
}

#[test]
fn configuring_twice_keeps_the_first_backup() {
    let tmp = TempDir::new().unwrap();
    let d = tmp.path();
    fs::create_dir_all(d.join("_default")).unwrap();
    fs::write(hosts(d, "_default"), "server = \"https://original\"\n").unwrap();
    run(d, &["--mirror", "http://127.0.0.1:5000"]);
    let report = run(d, &["--mirror", "http://127.0.0.1:5001"]);
    assert_eq!(report.entries[0].action, Action::Wrote);
    assert_eq!(
        fs::read_to_string(d.join("_default/hosts.toml.peermirror-backup")).unwrap(),
        "server = \"https://original\"\n"
    );
    assert_eq!(
        host_keys(&read_doc(&hosts(d, "_default"))),
        ["http://127.0.0.1:5001"]
    );
    run(d, &["--restore"]);
    assert_eq!(
        fs::read_to_string(hosts(d, "_default")).unwrap(),
        "server = \"https://original\"\n"
    );
}

#[test]
fn keep_existing_mirrors_puts_foreign_hosts_after_ours() {
    let tmp = TempDir::new().unwrap();
    let d = tmp.path();
    fs::create_dir_all(d.join("docker.io")).unwrap();
    let original = "server = \"https://registry-1.docker.io\"\n\n\
                    [host.\"https://z.example.com\"]\ncapabilities = [\"pull\", \"resolve\"]\n\n\
                    [host.\"https://a.example.com\"]\ncapabilities = [\"pull\"]\n";
    fs::write(hosts(d, "docker.io"), original).unwrap();
    let flags = ["--registry", "https://docker.io", "--keep-existing-mirrors"];
    run(
        d,
        &[&["--mirror", "http://127.0.0.1:5000"], &flags[..]].concat(),
    );
    let doc = read_doc(&hosts(d, "docker.io"));
    assert_eq!(
        host_keys(&doc),
        [
            "http://127.0.0.1:5000",
            "https://z.example.com",
            "https://a.example.com"
        ]
    );

    // A second run merges with the original, so the mirror it replaces does not linger.
    run(
        d,
        &[&["--mirror", "http://127.0.0.1:5001"], &flags[..]].concat(),
    );
    let doc = read_doc(&hosts(d, "docker.io"));
    assert_eq!(
        host_keys(&doc),
        [
            "http://127.0.0.1:5001",
            "https://z.example.com",
            "https://a.example.com"
        ]
    );
    assert_eq!(
        fs::read_to_string(d.join("docker.io/hosts.toml.peermirror-backup")).unwrap(),
        original
    );
}

#[test]
fn restore_only_the_given_registries() {
    let tmp = TempDir::new().unwrap();
    let d = tmp.path();
    run(
        d,
        &[
            "--mirror",
            "http://127.0.0.1:5000",
            "--registry",
            "https://ghcr.io",
            "--registry",
            "https://quay.io",
        ],
    );
    run(d, &["--restore", "--registry", "https://quay.io"]);
    assert_eq!(
        tree(d),
        ["ghcr.io/hosts.toml", "ghcr.io/hosts.toml.peermirror-none"]
    );
}

#[test]
fn restore_leaves_a_file_someone_else_replaced() {
    let tmp = TempDir::new().unwrap();
    let d = tmp.path();
    run(
        d,
        &[
            "--mirror",
            "http://127.0.0.1:5000",
            "--registry",
            "https://ghcr.io",
        ],
    );
    fs::write(hosts(d, "ghcr.io"), "server = \"https://admin-choice\"\n").unwrap();
    let report = run(d, &["--restore"]);
    assert_eq!(report.entries[0].action, Action::LeftForeign);
    assert_eq!(
        fs::read_to_string(hosts(d, "ghcr.io")).unwrap(),
        "server = \"https://admin-choice\"\n"
    );
    assert_eq!(tree(d), ["ghcr.io/hosts.toml"]);
}

#[test]
fn invalid_inputs_say_what_to_fix_and_write_nothing() {
    let tmp = TempDir::new().unwrap();
    let d = tmp.path();
    let secrets = TempDir::new().unwrap();
    let empty_token = secrets.path().join("empty");
    fs::write(&empty_token, "\n   \n").unwrap();
    let missing = secrets.path().join("missing-token");
    let cert = secrets.path().join("c.crt");
    fs::write(&cert, "pem").unwrap();
    let m = "http://127.0.0.1:5000";
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--mirror", "127.0.0.1:5000"],
            "--mirror \"127.0.0.1:5000\": no scheme; expected http(s)://HOST[:PORT]",
        ),
        (
            vec!["--mirror", "http://127.0.0.1:5000/v2"],
            "--mirror \"http://127.0.0.1:5000/v2\": a path",
        ),
        (
            vec!["--mirror", m, "--registry", "docker.io"],
            "--registry \"docker.io\": no scheme",
        ),
        (
            vec!["--mirror", m, "--mirror", m],
            "--mirror http://127.0.0.1:5000 is given twice",
        ),
        (
            vec![
                "--mirror",
                m,
                "--registry",
                "https://a.io",
                "--registry",
                "http://a.io",
            ],
            "--registry http://a.io is given twice",
        ),
        (
            vec!["--mirror", m, "--client-cert", cert.to_str().unwrap()],
            "give both or neither",
        ),
        (
            vec!["--mirror", m, "--ca-file", "ca.crt"],
            "--ca-file \"ca.crt\": must be an absolute path",
        ),
        (
            vec!["--mirror", m, "--ca-file", "/nonexistent/ca.crt"],
            "is not a readable file",
        ),
        (
            vec!["--mirror", m, "--token-file", missing.to_str().unwrap()],
            "cannot read --token-file",
        ),
        (
            vec!["--mirror", m, "--token-file", empty_token.to_str().unwrap()],
            "holds no token",
        ),
    ];
    for (flags, expected) in cases {
        let err = configure::run(&args(d, &flags)).unwrap_err().to_string();
        assert!(err.contains(expected), "{flags:?}: {err}");
    }
    let err = configure::run(&args(
        d,
        &["--mirror", m, "--token-file", missing.to_str().unwrap()],
    ))
    .unwrap_err();
    assert!(err.to_string().contains(missing.to_str().unwrap()), "{err}");

    // Built without clap (clap itself rejects a missing --mirror).
    let mut a = args(d, &["--restore"]);
    a.restore = false;
    assert!(matches!(configure::run(&a), Err(ConfigureError::NoMirror)));

    // An unparseable original with --keep-existing-mirrors: error, and nothing written.
    fs::create_dir_all(d.join("ghcr.io")).unwrap();
    fs::write(hosts(d, "ghcr.io"), "server = \n").unwrap();
    let err = configure::run(&args(
        d,
        &[
            "--mirror",
            m,
            "--registry",
            "https://quay.io",
            "--registry",
            "https://ghcr.io",
            "--keep-existing-mirrors",
        ],
    ))
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("line 1") && err.contains("drop --keep-existing-mirrors"),
        "{err}"
    );
    assert_eq!(tree(d), ["ghcr.io/hosts.toml"]);
}

// ---------------------------------------------------------------------------
// --containerd-config: the config_path in force, and the containerd 2.2+ trap
// ---------------------------------------------------------------------------

const V2_CRI: &str = "io.containerd.grpc.v1.cri";
const V3_IMAGES: &str = "io.containerd.cri.v1.images";

/// A containerd config of `version` whose CRI registry section has `config_path` (none when
/// `None`), plus `extra` lines under the CRI (images) plugin table.
fn containerd_config(version: u8, config_path: Option<&str>, extra: &str) -> String {
    let plugin = if version == 3 { V3_IMAGES } else { V2_CRI };
    let mut t = format!(
        "version = {version}\nroot = \"/var/lib/containerd\"\n\n[plugins.\"{plugin}\"]\n{extra}\n"
    );
    if let Some(cp) = config_path {
        t.push_str(&format!(
            "\n[plugins.\"{plugin}\".registry]\n  config_path = \"{cp}\"\n"
        ));
    }
    t
}

/// Runs `configure --containerd-config FILE` (no `--config-path`) with `config` as the file.
fn run_with_config(tmp: &Path, config: &str, flags: &[&str]) -> Result<Report, ConfigureError> {
    let file = tmp.join("config.toml");
    fs::write(&file, config).unwrap();
    let mut argv = vec![
        "peermirror-configure",
        "--containerd-config",
        file.to_str().unwrap(),
        "--mirror",
        "http://127.0.0.1:5000",
        "--registry",
        "https://docker.io",
    ];
    argv.extend_from_slice(flags);
    configure::run(&Cli::try_parse_from(argv).unwrap().args)
}

#[test]
fn containerd_config_v2_and_v3_single_dir_is_where_files_go_without_warnings() {
    for version in [2, 3] {
        let tmp = TempDir::new().unwrap();
        let certs = tmp.path().join("certs.d");
        let config = containerd_config(version, Some(certs.to_str().unwrap()), "");
        let report = run_with_config(tmp.path(), &config, &[]).unwrap();
        assert_eq!(report.warnings, Vec::<String>::new(), "v{version}");
        assert!(hosts(&certs, "docker.io").is_file(), "v{version}");
        // Given explicitly and the same: still quiet.
        let report = run_with_config(
            tmp.path(),
            &config,
            &["--config-path", certs.to_str().unwrap()],
        )
        .unwrap();
        assert!(
            report.warnings.is_empty(),
            "v{version}: {:?}",
            report.warnings
        );
    }
}

#[test]
fn containerd_config_v3_colon_list_writes_first_dir_and_warns_with_the_fix() {
    let tmp = TempDir::new().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let list = format!("{}:{}", a.display(), b.display());
    let report = run_with_config(tmp.path(), &containerd_config(3, Some(&list), ""), &[]).unwrap();
    assert!(hosts(&a, "docker.io").is_file());
    assert!(!b.exists());
    assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    let w = &report.warnings[0];
    for needle in [
        "CONTAINERD WILL IGNORE THE MIRROR",
        &list,
        "ONE directory",
        "12636",
        &format!("config_path = \"{}\"", a.display()),
        "use_local_image_pull = true",
    ] {
        assert!(w.contains(needle), "missing {needle:?} in: {w}");
    }
    // The same list on containerd 1.x (config v2) is split as containerd 1.x does: no trap.
    let tmp = TempDir::new().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let list = format!("{}:{}", a.display(), b.display());
    let report = run_with_config(tmp.path(), &containerd_config(2, Some(&list), ""), &[]).unwrap();
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    assert!(hosts(&a, "docker.io").is_file());
}

#[test]
fn containerd_config_v3_colon_list_with_local_image_pull_is_fine() {
    let tmp = TempDir::new().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let list = format!("{}:{}", a.display(), b.display());
    let config = containerd_config(3, Some(&list), "  use_local_image_pull = true");
    let report = run_with_config(tmp.path(), &config, &[]).unwrap();
    assert!(hosts(&a, "docker.io").is_file());
    // A note, not the alarm.
    assert!(
        report
            .warnings
            .iter()
            .all(|w| !w.contains("IGNORE THE MIRROR")),
        "{:?}",
        report.warnings
    );
    assert!(
        report.warnings.iter().all(|w| w.contains("fine")),
        "{:?}",
        report.warnings
    );
}

#[test]
fn containerd_config_v3_without_config_path_means_the_2_2_default_and_warns() {
    let tmp = TempDir::new().unwrap();
    let file = tmp.path().join("config.toml");
    fs::write(&file, containerd_config(3, None, "")).unwrap();
    let explicit = tmp.path().join("certs.d");
    // --config-path given (so nothing is written to /etc): the default's first directory is
    // not it, and the list itself is the trap.
    let a = args(
        &explicit,
        &[
            "--containerd-config",
            file.to_str().unwrap(),
            "--mirror",
            "http://127.0.0.1:5000",
        ],
    );
    let report = configure::run(&a).unwrap();
    let all = report.warnings.join("\n");
    assert!(
        all.contains("sets no config_path")
            && all.contains(configure::V3_DEFAULT_CONFIG_PATH)
            && all.contains("IGNORE THE MIRROR"),
        "{all}"
    );
    assert!(
        all.contains("written to") && all.contains("reads /etc/containerd/certs.d"),
        "{all}"
    );
    assert!(explicit.join("_default/hosts.toml").is_file());

    // The parsed view: the default applies, first directory /etc/containerd/certs.d.
    let c = configure::ContainerdConfig::parse(&file, &containerd_config(3, None, "")).unwrap();
    assert!(c.defaulted);
    assert_eq!(
        c.config_path.as_deref(),
        Some(configure::V3_DEFAULT_CONFIG_PATH)
    );
    assert_eq!(
        c.first_dir(),
        Some(PathBuf::from("/etc/containerd/certs.d"))
    );

    // v2 without config_path: CRI ignores hosts.toml; said so.
    let c = configure::ContainerdConfig::parse(&file, &containerd_config(2, None, "")).unwrap();
    let w = configure::check(&file, Some(&c), None).join("\n");
    assert!(
        w.contains("sets no registry config_path") && w.contains(V2_CRI),
        "{w}"
    );
}

#[test]
fn containerd_config_unreadable_or_invalid_is_an_error_naming_the_file() {
    let tmp = TempDir::new().unwrap();
    let d = tmp.path().join("certs.d");
    let run_cfg = |file: &Path| {
        let file = file.to_str().unwrap();
        configure::run(&args(
            &d,
            &[
                "--containerd-config",
                file,
                "--mirror",
                "http://127.0.0.1:5000",
            ],
        ))
    };
    let bad = tmp.path().join("bad.toml");
    for (text, expected) in [
        ("version = 3\n[plugins\n", "line 2"),
        ("version = 7\n", "version = 7"),
        (
            "version = 3\n[plugins.\"io.containerd.cri.v1.images\".registry]\nconfig_path = 5\n",
            "config_path is not a string",
        ),
    ] {
        fs::write(&bad, text).unwrap();
        let err = run_cfg(&bad).unwrap_err().to_string();
        assert!(
            err.contains(bad.to_str().unwrap()) && err.contains(expected),
            "{text:?}: {err}"
        );
        assert!(!d.exists(), "nothing written on a bad containerd config");
    }
    // A directory where the file should be: unreadable.
    let err = run_cfg(tmp.path()).unwrap_err().to_string();
    assert!(
        err.contains("cannot read the containerd config")
            && err.contains(tmp.path().to_str().unwrap()),
        "{err}"
    );
    // A file that does not exist: containerd runs on defaults; a warning, files still written.
    let report = run_cfg(&tmp.path().join("missing.toml")).unwrap();
    assert!(
        report.warnings.len() == 1 && report.warnings[0].contains("does not exist"),
        "{:?}",
        report.warnings
    );
    assert!(d.join("_default/hosts.toml").is_file());
}
