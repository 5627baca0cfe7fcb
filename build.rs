//! Provides `WSGATE_GIT_COMMIT` (short commit hash, or `unknown`) for `--version` and
//! `wsgate_build_info`, and `WSGATE_GIT_DATE` (its date, for the man page). Never fails the
//! build: a tarball, a crate without `.git` or a machine without git all get `unknown`. A
//! `WSGATE_GIT_COMMIT` set in the build's environment wins (Docker builds, whose context has
//! no `.git`).

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!s.is_empty()).then_some(s)
}

/// Asks cargo to rerun when `path` changes; a path that does not exist would make cargo
/// rerun this script on every build, so it is skipped.
fn watch(path: &str) {
    if Path::new(path).exists() {
        println!("cargo:rerun-if-changed={path}");
    }
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=WSGATE_GIT_COMMIT");
    let given = std::env::var("WSGATE_GIT_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty());
    let commit = given
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=WSGATE_GIT_COMMIT={commit}");
    // The man page's date: the commit's, so that the same commit gives the same page.
    let date = git(&["log", "-1", "--format=%cs", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=WSGATE_GIT_DATE={date}");

    // Ask git for the paths: in a worktree `.git` is a file and HEAD lives elsewhere, and
    // the branch ref may be loose or in packed-refs.
    if let Some(head) = git(&["rev-parse", "--git-path", "HEAD"]) {
        watch(&head);
    } else {
        watch(".git/HEAD");
    }
    if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"]) {
        if let Some(path) = git(&["rev-parse", "--git-path", &reference]) {
            watch(&path);
        }
        if let Some(packed) = git(&["rev-parse", "--git-path", "packed-refs"]) {
            watch(&packed);
        }
    }
}
