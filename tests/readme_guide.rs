//! The README's node guide is the files in `docs/node-guide/`, each shown verbatim (so what
//! `tests/e2e_guide.rs` runs is what an operator pastes), and each file is valid shell.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn guide_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/node-guide");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sh"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{files:?}");
    files
}

#[test]
fn the_readme_shows_every_guide_file_verbatim() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let files = guide_files();
    for f in &files {
        let name = f.file_name().unwrap().to_str().unwrap();
        let body = std::fs::read_to_string(f).unwrap();
        let block = format!("<!-- include docs/node-guide/{name} -->\n```sh\n{body}```\n");
        assert!(
            readme.contains(&block),
            "README.md does not show docs/node-guide/{name} verbatim (after its include marker)"
        );
    }
    // And no marker names a file that is gone.
    let markers = readme.matches("<!-- include docs/node-guide/").count();
    assert_eq!(markers, files.len(), "include markers vs files");
}

#[test]
fn every_guide_file_is_valid_shell() {
    for f in guide_files() {
        let out = Command::new("bash").arg("-n").arg(&f).output().unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            f.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
