//! A tmpfs mounted by a test (as root), for full disks and for a second file system.
#![allow(dead_code)]

use super::*;

/// A tmpfs mounted for one test, unmounted when dropped.
pub struct Tmpfs {
    pub dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs with `options` at `dir`; `None` (with a printed reason) when this
    /// machine cannot, unless `DUPMIRROR_REQUIRE_ORACLE=1`.
    pub fn mount(dir: &Path, options: &str) -> Option<Tmpfs> {
        fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
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
                if require_oracle() {
                    panic!("cannot mount a tmpfs ({why}) and DUPMIRROR_REQUIRE_ORACLE=1");
                }
                eprintln!("skipped: cannot mount a tmpfs here ({why}); run as root");
                None
            }
        }
    }

    pub fn remount(&self, options: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "remount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}
