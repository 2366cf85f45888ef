//! A tmpfs mounted by a test (as root): a small disk to fill, or a second file system.

use super::process::run_tool;
use super::{os, skip};
use std::fs;
use std::path::{Path, PathBuf};

/// A tmpfs mounted for one test, unmounted when dropped.
pub struct Tmpfs {
    pub dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs with `options` at `dir`; `None` (with a printed reason) when this
    /// machine cannot, unless `DUPMIRROR_REQUIRE_ORACLE=1`.
    pub fn mount(dir: &Path, options: &str) -> Option<Tmpfs> {
        fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs {
                dir: dir.to_path_buf(),
            }),
            other => {
                let why = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
                    Err(e) => e.to_string(),
                };
                skip(&format!("cannot mount a tmpfs here ({why}); run as root"));
                None
            }
        }
    }

    pub fn remount(&self, options: &str) {
        run_tool(
            "mount",
            [os("-o"), os(format!("remount,{options}")), os(&self.dir)],
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
    }
}
