//! The previous release, for the rolling-upgrade tests: its binary, built
//! once by `scripts/previous-release.sh` into the target directory of the
//! binary under test (`scripts/test.sh` runs the script before the tests,
//! so a test only finds it there).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The previous release's `groupcast` binary: `PREVIOUS_RELEASE_BIN`, else
/// what `scripts/previous-release.sh` prints, run with the target directory
/// of `current` (`<target>/debug/groupcast`).
pub fn previous_binary(current: &Path) -> PathBuf {
    if let Some(p) = std::env::var_os("PREVIOUS_RELEASE_BIN") {
        return p.into();
    }
    let target = current
        .parent()
        .and_then(Path::parent)
        .expect("the binary's target directory");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/previous-release.sh");
    let out = Command::new(&script)
        .env("CARGO_TARGET_DIR", target)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{}: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().into()
}

/// The version `bin --version` names (`0.1.0`).
pub fn version_of(bin: &Path) -> String {
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("run {} --version: {e}", bin.display()));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string()
}
