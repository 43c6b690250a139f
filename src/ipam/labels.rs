//! Sandboxes' labels in the store: `labels/<owner>` per sandbox instance
//! (`<name>@<id>`), holding the labels' line and its check, replaced whole
//! by a rename when they change (a reader sees the old labels or the new,
//! never a mix), removed with the sandbox or by gc.

use std::fs;
use std::io::{ErrorKind, Read};
use std::path::PathBuf;

use super::store::{io_err, Store};
use crate::error::{Error, Result};
use crate::names::fnv1a;
use crate::policy::Labels;

/// The most bytes a labels file may have.
const LABELS_MAX: u64 = 64 * 1024;

impl Store {
    fn labels_path(&self, owner: &str) -> PathBuf {
        self.dir().join("labels").join(owner)
    }

    /// Set the labels of sandbox instance `owner`, replacing what it had.
    pub(crate) fn write_labels(&self, owner: &str, labels: &Labels) -> Result<()> {
        let dir = self.dir().join("labels");
        match fs::create_dir(&dir) {
            Err(e) if e.kind() != ErrorKind::AlreadyExists => {
                return Err(io_err("make state directory", &dir, e))
            }
            _ => {}
        }
        let line = labels.encode();
        let text = format!("labels={line}\nsum={:016x}\n", fnv1a(line.as_bytes()));
        let (tmp, _) = self.write_temp(&text)?;
        let path = self.labels_path(owner);
        let renamed = fs::rename(&tmp, &path);
        if renamed.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        renamed.map_err(|e| io_err("write state file", &path, e))
    }

    /// The labels of sandbox instance `owner` (none if it has no file).
    ///
    /// # Errors
    /// [`Error::StateCorrupt`] naming the file if it is not what
    /// [`write_labels`](Store::write_labels) writes.
    pub(crate) fn read_labels(&self, owner: &str) -> Result<Labels> {
        let path = self.labels_path(owner);
        let mut text = String::new();
        match fs::File::open(&path) {
            Ok(f) => f
                .take(LABELS_MAX)
                .read_to_string(&mut text)
                .map_err(|e| io_err("read state file", &path, e))?,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Labels::new()),
            Err(e) => return Err(io_err("read state file", &path, e)),
        };
        let corrupt = |reason: &str| Error::StateCorrupt {
            path: path.clone(),
            reason: reason.to_owned(),
        };
        let mut lines = text.lines();
        let (Some(line), Some(sum), None) = (
            lines.next().and_then(|l| l.strip_prefix("labels=")),
            lines.next().and_then(|l| l.strip_prefix("sum=")),
            lines.next(),
        ) else {
            return Err(corrupt("it is not a labels= line and a sum= line"));
        };
        if sum != format!("{:016x}", fnv1a(line.as_bytes())) {
            return Err(corrupt("its labels do not match their check"));
        }
        Labels::decode(line).ok_or_else(|| corrupt("its labels= line holds no labels"))
    }

    /// Remove the labels of `owner`; none is fine.
    pub(crate) fn remove_labels(&self, owner: &str) -> Result<()> {
        let path = self.labels_path(owner);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(io_err("remove state file", &path, e)),
            _ => Ok(()),
        }
    }

    /// The owners that have labels files.
    pub(crate) fn labels_owners(&self) -> Result<Vec<String>> {
        let dir = self.dir().join("labels");
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("list", &dir, e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_err("list", &dir, e))?;
            out.push(entry.file_name().to_string_lossy().into_owned());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::store::tests::temp_root;

    /// A store in a fresh directory, and that directory (for the test
    /// to remove).
    fn store(tag: &str) -> (Store, std::path::PathBuf) {
        let root = temp_root(tag);
        (Store::open(&root, "netns-test", "br0").unwrap(), root)
    }

    #[test]
    fn labels_written_are_read_back_and_replaced_whole() {
        let (s, root) = store("labels-rw");
        assert_eq!(s.read_labels("a@1").unwrap(), Labels::new());
        let l = Labels::from_pairs([("app", "web"), ("tier", "front")]).unwrap();
        s.write_labels("a@1", &l).unwrap();
        assert_eq!(s.read_labels("a@1").unwrap(), l);
        let m = Labels::from_pairs([("app", "db")]).unwrap();
        s.write_labels("a@1", &m).unwrap();
        assert_eq!(s.read_labels("a@1").unwrap(), m);
        assert_eq!(s.labels_owners().unwrap(), vec!["a@1".to_owned()]);
        s.remove_labels("a@1").unwrap();
        s.remove_labels("a@1").unwrap();
        assert!(s.labels_owners().unwrap().is_empty());
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_damaged_labels_file_is_corrupt_naming_it() {
        let (s, root) = store("labels-bad");
        s.write_labels("a@1", &Labels::from_pairs([("app", "web")]).unwrap())
            .unwrap();
        let path = s.labels_path("a@1");
        for bad in ["", "labels=app=web\n", "labels=app=wEb\nsum=0\n", "garbage"] {
            fs::write(&path, bad).unwrap();
            let err = s.read_labels("a@1").unwrap_err();
            assert!(matches!(err, Error::StateCorrupt { .. }), "{bad:?}: {err}");
            assert!(err.to_string().contains("labels/a@1"), "{err}");
        }
        fs::remove_dir_all(root).unwrap();
    }
}
