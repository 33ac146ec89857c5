//! A full disk for a test's processes: [`SmallDisk`] is a size-limited
//! tmpfs mounted on a directory of the test's own, which [`SmallDisk::fill`]
//! fills to the last byte (a filler file) and [`SmallDisk::free`] empties
//! again. Writes into it then fail with `ENOSPC` (`No space left on
//! device`), as on a real disk that filled up.
//!
//! Only inside [`crate::netfault::isolated`]: the test runs in a mount
//! namespace of its own, so the mount is seen by the test and the processes
//! it starts, by nothing else, and goes away with the namespace even when
//! the test is killed. [`SmallDisk`] unmounts it and removes its directory
//! on drop. Needs root and `mount` (util-linux).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::netfault::ENV_TAG;

/// A tmpfs of a fixed size, mounted until dropped.
pub struct SmallDisk {
    dir: PathBuf,
    size: u64,
}

const FILLER: &str = "filler";

impl SmallDisk {
    /// Mounts a tmpfs of `size` bytes on a new directory under the temp
    /// dir. Panics outside `netfault::isolated` (it never mounts anything
    /// in a namespace it did not make).
    pub fn mount(name: &str, size: u64) -> SmallDisk {
        let tag = std::env::var(ENV_TAG).expect(
            "SmallDisk only inside netfault::isolated (a mount namespace of the test's own)",
        );
        let dir = std::env::temp_dir().join(format!("groupcast-disk-{tag}-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("make the mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .output()
            .expect("run mount (util-linux)");
        assert!(
            out.status.success(),
            "mount a tmpfs on {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { dir, size }
    }

    /// The mounted directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Fills the disk: writes a filler file until the disk refuses more
    /// (`ENOSPC`); returns the filler's size. Panics on any other error.
    pub fn fill(&self) -> u64 {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(FILLER))
            .expect("open the filler");
        let mut written = 0u64;
        // Big chunks first, then small ones for the last pages.
        for chunk in [1 << 20, 4096, 1] {
            let buf = vec![0xa5u8; chunk];
            loop {
                match f.write(&buf) {
                    Ok(0) => break,
                    Ok(n) => written += n as u64,
                    Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                    Err(e) => panic!("fill {}: {e}", self.dir.display()),
                }
                assert!(
                    written <= self.size,
                    "{} holds more than its size",
                    self.dir.display()
                );
            }
        }
        written
    }

    /// Removes the filler: the space is back.
    pub fn free(&self) {
        std::fs::remove_file(self.dir.join(FILLER)).expect("remove the filler");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazy: a process that still holds a file in it (killed, not yet
        // reaped) does not keep the mount.
        let _ = Command::new("umount").arg("--lazy").arg(&self.dir).output();
        let _ = std::fs::remove_dir(&self.dir);
    }
}
