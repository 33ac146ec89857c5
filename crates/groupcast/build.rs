//! Puts the commit the binary is built from into `groupcast --version`
//! (`BUILT_FROM_COMMIT`; not `GROUPCAST_*`: cargo also sets it when it runs
//! the crate's tests, and the binaries they start read every `GROUPCAST_*`
//! variable as configuration): `git rev-parse --short=12 HEAD`, with `-dirty` when
//! the work tree had changes to tracked files, or `unknown` outside a git
//! checkout (a source tarball).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

fn main() {
    let commit = match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(c) => {
            let dirty = Command::new("git")
                .args(["diff", "--quiet", "HEAD", "--"])
                .status()
                .is_ok_and(|s| !s.success());
            if dirty {
                format!("{c}-dirty")
            } else {
                c
            }
        }
        None => "unknown".into(),
    };
    println!("cargo:rustc-env=BUILT_FROM_COMMIT={commit}");
    // Built again when HEAD moves (a commit, a checkout); not on every
    // change of the work tree, so `-dirty` is as of the last build that ran.
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        for f in ["HEAD", "logs/HEAD"] {
            println!("cargo:rerun-if-changed={dir}/{f}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
