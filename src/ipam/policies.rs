//! A network's policies in the store: one file, `policies`, holding all
//! of them and a check (`policy_text`), replaced whole by a rename, so
//! every process reads the old set of policies or the new, never a mix.
//! No file: no policy.

use std::fs;
use std::io::{ErrorKind, Read};
use std::path::PathBuf;

use super::policy_text as encode;
use super::store::{io_err, Store};
use crate::error::{Error, Result};
use crate::policy::Policy;

/// The most bytes the policies file may have.
const POLICIES_MAX: u64 = 64 * 1024 * 1024;

impl Store {
    fn policies_path(&self) -> PathBuf {
        self.dir().join("policies")
    }

    /// Whether the network has policies (its file exists).
    pub(crate) fn has_policies(&self) -> bool {
        self.policies_path().exists()
    }

    /// The network's policies (none without a file).
    ///
    /// # Errors
    /// [`Error::StateCorrupt`] naming the file if it is not what
    /// [`write_policies`](Store::write_policies) writes.
    pub(crate) fn read_policies(&self) -> Result<Vec<Policy>> {
        let path = self.policies_path();
        let mut text = String::new();
        match fs::File::open(&path) {
            Ok(f) => f
                .take(POLICIES_MAX)
                .read_to_string(&mut text)
                .map_err(|e| match e.kind() {
                    ErrorKind::InvalidData => Error::StateCorrupt {
                        path: path.clone(),
                        reason: "it is not UTF-8 text".to_owned(),
                    },
                    _ => io_err("read state file", &path, e),
                })?,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("read state file", &path, e)),
        };
        encode::decode(&text).map_err(|reason| Error::StateCorrupt {
            path,
            reason: reason.to_owned(),
        })
    }

    /// Make `policies` the network's (none: the file goes).
    pub(crate) fn write_policies(&self, policies: &[Policy]) -> Result<()> {
        let path = self.policies_path();
        if policies.is_empty() {
            return match fs::remove_file(&path) {
                Err(e) if e.kind() != ErrorKind::NotFound => {
                    Err(io_err("remove state file", &path, e))
                }
                _ => Ok(()),
            };
        }
        let (tmp, _) = self.write_temp(&encode::encode(policies))?;
        let renamed = fs::rename(&tmp, &path);
        if renamed.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        renamed.map_err(|e| io_err("write state file", &path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::store::tests::temp_root;
    use crate::policy::Selector;

    #[test]
    fn policies_written_are_read_back_and_none_removes_the_file() {
        let root = temp_root("policies-rw");
        let s = Store::open(&root, "netns-test", "br0").unwrap();
        assert!(s.read_policies().unwrap().is_empty());
        let p = vec![Policy::new("deny", Selector::everything()).unwrap()];
        s.write_policies(&p).unwrap();
        assert_eq!(s.read_policies().unwrap(), p);
        s.write_policies(&[]).unwrap();
        assert!(!s.policies_path().exists());
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_damaged_policies_file_is_corrupt_naming_it() {
        let root = temp_root("policies-bad");
        let s = Store::open(&root, "netns-test", "br0").unwrap();
        for bad in [&b"policy x *\n"[..], b"\xff\xfe", b"sum=0\n"] {
            fs::write(s.policies_path(), bad).unwrap();
            let err = s.read_policies().unwrap_err();
            assert!(matches!(err, Error::StateCorrupt { .. }), "{err}");
            assert!(err.to_string().contains("policies"), "{err}");
        }
        fs::remove_dir_all(root).unwrap();
    }
}
