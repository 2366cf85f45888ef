//! A repository in a local folder (or any mounted file system): listed and read in place,
//! with no copy, cache or retry.

use super::lease::{self, LeasedFile};
use super::{Backend, ListEntry, Opened};
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::PathBuf;

pub struct LocalBackend {
    root: PathBuf,
}

impl LocalBackend {
    pub fn new(path: &str) -> Result<Self> {
        let root = PathBuf::from(path);
        let meta = std::fs::metadata(&root)
            .with_context(|| format!("cannot open source folder {}", root.display()))?;
        if !meta.is_dir() {
            bail!("source {} is not a folder", root.display());
        }
        Ok(LocalBackend { root })
    }

    fn open_file(&self, name: &str) -> Result<File> {
        let path = self.root.join(name);
        File::open(&path).with_context(|| format!("cannot open {}", path.display()))
    }
}

impl Backend for LocalBackend {
    fn list(&self) -> Result<Vec<ListEntry>> {
        let mut out = Vec::new();
        let dir = std::fs::read_dir(&self.root)
            .with_context(|| format!("cannot list source folder {}", self.root.display()))?;
        for entry in dir {
            let entry = entry.with_context(|| format!("cannot list {}", self.root.display()))?;
            // Names that are not UTF-8 cannot be duplicity's own files.
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let size = entry
                .metadata()
                .ok()
                .filter(|m| m.is_file())
                .map(|m| m.len());
            if size.is_some() {
                out.push(ListEntry { name, size });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn open(&self, name: &str, offset: u64) -> Result<Opened> {
        let mut f = self.open_file(name)?;
        if offset > 0 {
            f.seek(SeekFrom::Start(offset))?;
        }
        Ok(Opened {
            reader: Box::new(f),
            offset,
        })
    }

    fn display(&self) -> String {
        self.root.display().to_string()
    }

    fn is_local(&self) -> bool {
        true
    }

    fn open_pinned(&self, name: &str) -> Option<Result<LeasedFile>> {
        match self.open_file(name) {
            Ok(file) => lease::pin(file).ok().map(Ok),
            Err(e) => Some(Err(e)),
        }
    }
}
