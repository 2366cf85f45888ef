//! What a backup records about each object besides its content.
//!
//! Duplicity keeps the tar header's view of a file (docs/format.md §5.4): its type,
//! permission bits, numeric and symbolic owner, and mtime in whole seconds. No atime,
//! ACLs or xattrs, and never hard links.

/// The kind of object, with what each kind carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileType {
    Regular,
    Dir,
    Symlink(Vec<u8>),
    Fifo,
    CharDevice { major: u32, minor: u32 },
    BlockDevice { major: u32, minor: u32 },
}

impl FileType {
    pub fn name(&self) -> &'static str {
        match self {
            FileType::Regular => "file",
            FileType::Dir => "dir",
            FileType::Symlink(_) => "symlink",
            FileType::Fifo => "fifo",
            FileType::CharDevice { .. } => "chardev",
            FileType::BlockDevice { .. } => "blockdev",
        }
    }
}

/// Metadata of one object, as stored in its tar header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metadata {
    pub file_type: FileType,
    /// Permission bits including setuid, setgid and sticky (07777).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub uname: Vec<u8>,
    pub gname: Vec<u8>,
    /// Whole seconds; negative times were clamped to 0 by duplicity.
    pub mtime: i64,
}

impl Metadata {
    pub fn is_dir(&self) -> bool {
        self.file_type == FileType::Dir
    }

    pub fn is_regular(&self) -> bool {
        self.file_type == FileType::Regular
    }
}
