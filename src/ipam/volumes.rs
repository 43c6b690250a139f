//! Pod volume directories: `volumes/<owner>/` in a network's store
//! directory, one per sandbox instance (`<name>@<id>`), made by the pod
//! layer on demand and removed with the sandbox or by gc. Beside the
//! address store, not part of it.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The pod volume directories of one network's store directory.
#[derive(Debug, Clone)]
pub(crate) struct Volumes {
    /// `<store dir>/volumes`.
    dir: PathBuf,
}

impl Volumes {
    /// The volumes of the store in `store_dir` (see `Store::dir`).
    pub(crate) fn of(store_dir: &Path) -> Volumes {
        Volumes {
            dir: store_dir.join("volumes"),
        }
    }

    /// Where the sandbox instance `owner` (`<name>@<id>`) keeps its pod
    /// volumes; made by the pod layer on demand.
    pub(crate) fn dir(&self, owner: &str) -> PathBuf {
        self.dir.join(owner)
    }

    /// Remove the volumes of `owner`, if it has any.
    pub(crate) fn remove(&self, owner: &str) -> Result<()> {
        let dir = self.dir(owner);
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != ErrorKind::NotFound => {
                Err(Error::io("remove pod volumes", &dir, e))
            }
            _ => Ok(()),
        }
    }

    /// The owners (`<name>@<id>`) that have a volumes directory.
    pub(crate) fn owners(&self) -> Result<Vec<String>> {
        let dir = &self.dir;
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("list", dir, e)),
        };
        let mut owners = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("list", dir, e))?;
            owners.push(entry.file_name().to_string_lossy().into_owned());
        }
        Ok(owners)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_are_listed_by_owner_and_removed_once() {
        let root = std::env::temp_dir().join(format!("podnet-volumes-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let volumes = Volumes::of(&root);
        assert_eq!(volumes.owners().unwrap(), Vec::<String>::new());
        assert_eq!(volumes.dir("web@1-2-3"), root.join("volumes/web@1-2-3"));
        fs::create_dir_all(volumes.dir("web@1-2-3").join("scratch")).unwrap();
        assert_eq!(volumes.owners().unwrap(), ["web@1-2-3"]);
        volumes.remove("web@1-2-3").unwrap();
        volumes.remove("web@1-2-3").unwrap();
        assert_eq!(volumes.owners().unwrap(), Vec::<String>::new());
        fs::remove_dir_all(&root).unwrap();
    }
}
