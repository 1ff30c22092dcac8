//! API keys: who may call, under which name, with which role. A task
//! belongs to the name of the key that created it (`tasks::Caller`).
//!
//! Keys come from `--api-key` (named `key-1`, `key-2`, … in order) and from
//! `--api-keys-file`, which is either one key per line (named `line-<n>`,
//! `#` comments) or YAML:
//!
//! ```yaml
//! - name: alice
//!   key: 3f9c…            # or key_sha256: <hex digest of the key>
//!   role: admin           # admin sees every task; user (the default) its own
//! ```
//!
//! Only SHA-256 digests are kept in memory, and a presented key is compared
//! with every digest in constant time (keys are high-entropy secrets, so a
//! plain digest is enough; a slow password hash would only cost every call).
//! The file is read again on SIGHUP; a file that no longer parses keeps the
//! keys in force, and says why.

use std::{
    path::PathBuf,
    sync::{Arc, RwLock},
};

use anyhow::Context as _;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::tasks::Caller;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
enum Role {
    Admin,
    #[default]
    User,
}

struct Key {
    name: String,
    digest: [u8; 32],
    role: Role,
}

/// The keys in force (cheap to clone; shared with the reloader).
#[derive(Clone, Default)]
pub struct ApiKeys {
    keys: Arc<RwLock<Arc<Vec<Key>>>>,
    flag_keys: Arc<Vec<String>>,
    file: Option<PathBuf>,
}

/// Never prints a key.
impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} configured)", self.current().len())
    }
}

/// One entry of a YAML keys file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    key: Option<String>,
    key_sha256: Option<String>,
    #[serde(default)]
    role: Role,
}

impl ApiKeys {
    /// Keys given on the command line (no file).
    pub fn new(keys: impl IntoIterator<Item = String>) -> Self {
        Self::load(keys.into_iter().collect(), None).expect("command-line keys always parse")
    }

    /// The command line's keys and the file's; an unreadable or malformed
    /// file stops the start.
    pub fn load(flag_keys: Vec<String>, file: Option<PathBuf>) -> anyhow::Result<Self> {
        let this = Self {
            keys: Arc::default(),
            flag_keys: Arc::new(flag_keys),
            file,
        };
        let keys = this.read()?;
        *this.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
        Ok(this)
    }

    /// Reads the file again (SIGHUP). Returns how many keys are in force.
    pub fn reload(&self) -> anyhow::Result<usize> {
        let keys = self.read()?;
        let n = keys.len();
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
        Ok(n)
    }

    pub fn is_enabled(&self) -> bool {
        !self.current().is_empty()
    }

    /// Who `presented` is, if it is one of the keys.
    pub fn identify(&self, presented: &str) -> Option<Caller> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // Every digest is compared (no early exit), each in constant time.
        let keys = self.current();
        let mut found = None;
        for key in keys.iter() {
            if constant_time_eq(&key.digest, &digest) {
                found = Some(key);
            }
        }
        found.map(|k| match k.role {
            Role::Admin => Caller::Admin(k.name.clone()),
            Role::User => Caller::User(k.name.clone()),
        })
    }

    fn current(&self) -> Arc<Vec<Key>> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn read(&self) -> anyhow::Result<Vec<Key>> {
        let mut keys: Vec<Key> = self
            .flag_keys
            .iter()
            .map(|k| k.trim())
            .filter(|k| !k.is_empty())
            .enumerate()
            .map(|(i, k)| Key {
                name: format!("key-{}", i + 1),
                digest: Sha256::digest(k.as_bytes()).into(),
                role: Role::User,
            })
            .collect();
        if let Some(path) = &self.file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading API keys from {}", path.display()))?;
            let from_file =
                parse_file(&text).with_context(|| format!("API keys file {}", path.display()))?;
            keys.extend(from_file);
        }
        let mut names = std::collections::HashSet::new();
        for k in &keys {
            anyhow::ensure!(
                names.insert(k.name.as_str()),
                "the key name {:?} is used twice (a task belongs to its key's name)",
                k.name
            );
        }
        Ok(keys)
    }
}

fn parse_file(text: &str) -> anyhow::Result<Vec<Key>> {
    let is_yaml = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .is_some_and(|l| l.starts_with("- ") || l == "-");
    if !is_yaml {
        // One key per line.
        return Ok(text
            .lines()
            .enumerate()
            .map(|(i, l)| (i, l.trim()))
            .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
            .map(|(i, l)| Key {
                name: format!("line-{}", i + 1),
                digest: Sha256::digest(l.as_bytes()).into(),
                role: Role::User,
            })
            .collect());
    }
    let entries: Vec<Entry> = serde_norway::from_str(text)?;
    entries
        .into_iter()
        .map(|e| {
            anyhow::ensure!(!e.name.trim().is_empty(), "a key without a name");
            let digest = match (e.key, e.key_sha256) {
                (Some(key), None) if !key.trim().is_empty() => {
                    Sha256::digest(key.trim().as_bytes()).into()
                }
                (None, Some(hex)) => parse_digest(&hex).with_context(|| {
                    format!("key {:?}: key_sha256 is not 64 hex digits", e.name)
                })?,
                _ => anyhow::bail!("key {:?}: give exactly one of key and key_sha256", e.name),
            };
            Ok(Key {
                name: e.name.trim().to_string(),
                digest,
                role: e.role,
            })
        })
        .collect()
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn keys_are_matched_exactly_and_named() {
        let keys = ApiKeys::new(["alpha".to_string(), " beta ".to_string(), String::new()]);
        assert!(keys.is_enabled());
        assert_eq!(keys.identify("alpha"), Some(Caller::User("key-1".into())));
        assert_eq!(keys.identify("beta"), Some(Caller::User("key-2".into())));
        assert_eq!(keys.identify("alph"), None);
        assert_eq!(keys.identify(""), None);
        assert!(!ApiKeys::new([]).is_enabled());
    }

    #[test]
    fn a_yaml_file_names_keys_gives_roles_and_may_hold_digests() {
        let digest: String = Sha256::digest(b"s3cret-bob")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let file = write(&format!(
            "# team keys\n- name: alice\n  key: s3cret-alice\n  role: admin\n- name: bob\n  key_sha256: {digest}\n"
        ));
        let keys = ApiKeys::load(vec![], Some(file.path().into())).unwrap();
        assert_eq!(
            keys.identify("s3cret-alice"),
            Some(Caller::Admin("alice".into()))
        );
        assert_eq!(
            keys.identify("s3cret-bob"),
            Some(Caller::User("bob".into()))
        );
        assert_eq!(keys.identify(&digest), None, "a digest is not a key");
    }

    #[test]
    fn plain_lines_still_work_and_bad_files_are_refused() {
        let file = write("# one per line\nk-one\n\nk-two\n");
        let keys = ApiKeys::load(vec![], Some(file.path().into())).unwrap();
        assert_eq!(keys.identify("k-two"), Some(Caller::User("line-4".into())));
        for bad in [
            "- name: a\n  key: x\n- name: a\n  key: y\n",
            "- name: a\n",
            "- name: a\n  key: x\n  key_sha256: 00\n",
            "- name: a\n  key: x\n  role: root\n",
            "- name: a\n  key_sha256: xyz\n",
        ] {
            let file = write(bad);
            assert!(
                ApiKeys::load(vec![], Some(file.path().into())).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_reload_takes_new_keys_and_a_broken_file_keeps_the_old_ones() {
        let file = write("- name: a\n  key: first\n");
        let keys = ApiKeys::load(vec![], Some(file.path().into())).unwrap();
        std::fs::write(file.path(), "- name: a\n  key: second\n").unwrap();
        assert_eq!(keys.reload().unwrap(), 1);
        assert_eq!(keys.identify("first"), None);
        assert_eq!(keys.identify("second"), Some(Caller::User("a".into())));
        std::fs::write(file.path(), "- name: a\n").unwrap();
        assert!(keys.reload().is_err());
        assert_eq!(keys.identify("second"), Some(Caller::User("a".into())));
    }
}
