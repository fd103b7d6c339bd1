//! [`Tmpfs`]: a small tmpfs mounted on a temporary directory, for a data
//! directory on a file system smaller than `max_size`. Mounting needs root:
//! without it (or without `mount`), [`Tmpfs::mount`] prints why and returns
//! `None`, and the test skips. Unmounted (lazily) on drop.

use std::path::Path;
use std::process::Command;

#[derive(Debug)]
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// A tmpfs of `size` (`mount -o size=`, e.g. `8m`), or `None` with the
    /// reason printed.
    pub fn mount(size: &str) -> Option<Tmpfs> {
        Self::mount_with(&format!("size={size}"))
    }

    /// A tmpfs of `size` holding at most `inodes` files and directories.
    pub fn mount_with_inodes(size: &str, inodes: u32) -> Option<Tmpfs> {
        Self::mount_with(&format!("size={size},nr_inodes={inodes}"))
    }

    fn mount_with(options: &str) -> Option<Tmpfs> {
        let uid = Command::new("id").arg("-u").output().ok()?;
        if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
            eprintln!("skipped: mounting a tmpfs needs root");
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir.path())
            .status();
        match status {
            Ok(s) if s.success() => Some(Tmpfs { dir }),
            other => {
                eprintln!("skipped: cannot mount a tmpfs: {other:?}");
                None
            }
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}
