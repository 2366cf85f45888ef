//! A repository held in memory: the reference [`Backend`] for fast, deterministic tests (no
//! folder, no server), and the contract of `source/mod.rs` in its plainest form.
//!
//! Files can be added and removed while it is in use, as on a live server. Listing gives
//! every file with its exact size, sorted by name; a ranged open starts where it is asked to
//! (or at 0 past the end, like an HTTP server answering 416); a missing file is a permanent
//! error.

use super::{Backend, ListEntry, Opened, SourceError};
use anyhow::{anyhow, Context, Result};
use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::Path;
use std::sync::{Arc, RwLock};

pub struct MemoryBackend {
    label: String,
    files: RwLock<BTreeMap<String, Arc<[u8]>>>,
}

impl MemoryBackend {
    /// An empty repository, shown as `memory:LABEL`.
    pub fn new(label: &str) -> MemoryBackend {
        MemoryBackend {
            label: label.to_string(),
            files: RwLock::new(BTreeMap::new()),
        }
    }

    /// A copy of the regular files directly in `dir` (not recursive, names that are UTF-8).
    pub fn from_dir(dir: &Path) -> Result<MemoryBackend> {
        let backend = MemoryBackend::new(&dir.display().to_string());
        let entries =
            std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if entry.file_type().is_ok_and(|t| t.is_file()) {
                let path = entry.path();
                let data = std::fs::read(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                backend.insert(&name, data);
            }
        }
        Ok(backend)
    }

    /// Adds or replaces a file.
    pub fn insert(&self, name: &str, data: impl Into<Arc<[u8]>>) {
        if let Ok(mut files) = self.files.write() {
            files.insert(name.to_string(), data.into());
        }
    }

    pub fn remove(&self, name: &str) {
        if let Ok(mut files) = self.files.write() {
            files.remove(name);
        }
    }

    fn get(&self, name: &str) -> Result<Option<Arc<[u8]>>> {
        let files = self
            .files
            .read()
            .map_err(|_| anyhow!("the memory backend's lock is poisoned"))?;
        Ok(files.get(name).cloned())
    }
}

impl Backend for MemoryBackend {
    fn list(&self) -> Result<Vec<ListEntry>> {
        let files = self
            .files
            .read()
            .map_err(|_| anyhow!("the memory backend's lock is poisoned"))?;
        Ok(files
            .iter()
            .map(|(name, data)| ListEntry {
                name: name.clone(),
                size: Some(data.len() as u64),
            })
            .collect())
    }

    fn open(&self, name: &str, offset: u64) -> Result<Opened> {
        let Some(data) = self.get(name)? else {
            return Err(anyhow!(SourceError::Permanent(format!(
                "{name}: no such file"
            ))));
        };
        let offset = if offset <= data.len() as u64 {
            offset
        } else {
            0
        };
        let mut reader = Cursor::new(data);
        reader.set_position(offset);
        Ok(Opened {
            reader: Box::new(reader),
            offset,
        })
    }

    fn display(&self) -> String {
        format!("memory:{}", self.label)
    }
}
