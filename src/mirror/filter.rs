//! Which part of the backup a mirror keeps: the whole tree, or only some subtrees.
//!
//! `sync --path P` (repeatable) keeps the subtrees P at their own paths inside DEST. A
//! [`PathFilter`] answers the two questions the rest of the code asks: does this record
//! belong to the mirror (it lies in a kept subtree, or is a directory on the way to one),
//! and might this volume hold any of it (its manifest range overlaps a kept subtree). The
//! same filter, with the damaged paths as its subtrees, drives repairs.

use crate::index::PathIndex;
use crate::repo::manifest::VolumeInfo;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PathFilter {
    /// Sorted, without any path that lies inside another; `None` means the whole tree
    /// (and an empty list means nothing at all).
    roots: Option<Vec<PathIndex>>,
}

impl PathFilter {
    /// The whole tree.
    pub fn all() -> Self {
        PathFilter { roots: None }
    }

    /// Only the given subtrees (the root among them means the whole tree; none at all
    /// means nothing).
    pub fn subtrees(paths: impl IntoIterator<Item = PathIndex>) -> Self {
        let mut roots: Vec<PathIndex> = paths.into_iter().collect();
        roots.sort();
        roots.dedup();
        let mut kept: Vec<PathIndex> = Vec::new();
        for p in roots {
            if !kept.last().is_some_and(|k| p.starts_with(k)) {
                kept.push(p);
            }
        }
        if kept.iter().any(|p| p.is_root()) {
            return PathFilter::all();
        }
        PathFilter { roots: Some(kept) }
    }

    /// From `--path` arguments (empty: the whole tree).
    pub fn from_args(paths: &[String]) -> Self {
        if paths.is_empty() {
            return PathFilter::all();
        }
        PathFilter::subtrees(paths.iter().map(|p| PathIndex::from_bytes(p.as_bytes())))
    }

    pub fn is_all(&self) -> bool {
        self.roots.is_none()
    }

    /// The kept subtrees; empty for the whole tree.
    pub fn roots(&self) -> &[PathIndex] {
        self.roots.as_deref().unwrap_or(&[])
    }

    /// True when `index` lies in a kept subtree.
    pub fn covers(&self, index: &PathIndex) -> bool {
        match &self.roots {
            None => true,
            Some(roots) => {
                let after = roots.partition_point(|r| r <= index);
                after > 0 && index.starts_with(&roots[after - 1])
            }
        }
    }

    /// True when `index` lies in a kept subtree or is an ancestor of one (the directories
    /// that lead to a subtree are part of the mirror too).
    pub fn wants(&self, index: &PathIndex) -> bool {
        // Binary searches (a repair or a new full can keep thousands of subtrees, and every
        // record asks): a path's kept ancestor is the last root not after it, its kept
        // descendants come right after it.
        match &self.roots {
            None => true,
            Some(roots) => {
                let after = roots.partition_point(|r| r <= index);
                (after > 0 && index.starts_with(&roots[after - 1]))
                    || roots.get(after).is_some_and(|r| r.starts_with(index))
            }
        }
    }

    /// True when a volume may hold records of a kept subtree.
    pub fn needs_volume(&self, volume: &VolumeInfo) -> bool {
        match &self.roots {
            None => true,
            Some(roots) => roots.iter().any(|r| volume.may_contain(r)),
        }
    }

    /// The paths as text (for the state file and reports); empty for the whole tree.
    pub fn to_strings(&self) -> Vec<String> {
        self.roots().iter().map(|r| r.to_string()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(s: &str) -> PathIndex {
        PathIndex::from_bytes(s.as_bytes())
    }

    #[test]
    fn nested_paths_collapse_and_root_means_all() {
        let f = PathFilter::subtrees([idx("a/b"), idx("a"), idx("c/d")]);
        assert_eq!(f.roots(), &[idx("a"), idx("c/d")]);
        assert!(PathFilter::subtrees([idx("a"), idx(".")]).is_all());
        let none = PathFilter::subtrees([]);
        assert!(!none.is_all() && !none.wants(&idx("a")) && !none.covers(&idx("a")));
        assert!(PathFilter::from_args(&[]).is_all());
    }

    #[test]
    fn wants_ancestors_and_contents() {
        let f = PathFilter::subtrees([idx("c/d")]);
        assert!(f.wants(&PathIndex::root()));
        assert!(f.wants(&idx("c")));
        assert!(f.wants(&idx("c/d/e")));
        assert!(!f.wants(&idx("c/x")));
        assert!(!f.covers(&idx("c")));
        assert!(f.covers(&idx("c/d")));
    }

    #[test]
    fn searches_agree_with_a_scan_of_every_root() {
        let paths = [
            "a", "a/b", "a/b/c", "a-b", "a/x", "b", "b/y/z", "c", "c/d", "c/d/e", "ca",
        ];
        for picked in 0..(1u32 << paths.len()) {
            let roots: Vec<PathIndex> = (0..paths.len())
                .filter(|i| picked & (1 << i) != 0)
                .map(|i| idx(paths[i]))
                .collect();
            let f = PathFilter::subtrees(roots.clone());
            for p in paths.iter().map(|p| idx(p)).chain([PathIndex::root()]) {
                let covered = roots.iter().any(|r| p.starts_with(r));
                let wanted = covered || roots.iter().any(|r| r.starts_with(&p));
                assert_eq!(f.covers(&p), covered, "{p} in {roots:?}");
                assert_eq!(f.wants(&p), wanted, "{p} in {roots:?}");
            }
        }
    }
}
