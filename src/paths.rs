//! Configured paths made absolute once, at start-up.
//!
//! agentd takes paths from flags, the environment and files (data directory,
//! Trae config file, API keys file, allowed roots). Each is resolved here
//! against the directory agentd was started in, so nothing below the
//! configuration layer ever sees a relative path: a relative data directory
//! handed to the engine as an Agent Protocol workspace was refused at every
//! step. `~` and `~/…` expand to `$HOME`, as a shell would (environment files
//! of service managers do not expand them).

use std::path::{Component, Path, PathBuf};

/// Resolves configured paths against one base directory.
#[derive(Debug, Clone)]
pub struct PathResolver {
    base: PathBuf,
    home: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    #[error("{what} is empty")]
    Empty { what: String },
    #[error("{what} {path:?}: `~user` paths are not supported; write the full path")]
    OtherUsersHome { what: String, path: String },
    #[error("{what} {path:?} starts with `~` but HOME is not set")]
    NoHome { what: String, path: String },
}

impl PathResolver {
    /// Against the process's working directory and `$HOME`.
    pub fn from_process() -> anyhow::Result<Self> {
        let base = std::env::current_dir()
            .map_err(|e| anyhow::anyhow!("cannot read the current working directory: {e}"))?;
        let home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(PathBuf::from);
        Ok(Self::new(base, home))
    }

    /// `base` must be absolute (it is what relative paths are taken against).
    pub fn new(base: PathBuf, home: Option<PathBuf>) -> Self {
        Self { base, home }
    }

    /// The directory relative paths are resolved against.
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// `path` made absolute and normalised (`.` dropped, `..` folded into its
    /// parent). `what` names the setting in errors, e.g. "--data-dir".
    pub fn absolute(&self, what: &str, path: &Path) -> Result<PathBuf, PathError> {
        let text = path.to_string_lossy();
        if text.trim().is_empty() {
            return Err(PathError::Empty { what: what.into() });
        }
        let expanded = match text.strip_prefix('~') {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => {
                let home = self.home.as_ref().ok_or_else(|| PathError::NoHome {
                    what: what.into(),
                    path: text.to_string(),
                })?;
                home.join(rest.trim_start_matches('/'))
            }
            Some(_) => {
                return Err(PathError::OtherUsersHome {
                    what: what.into(),
                    path: text.to_string(),
                });
            }
            None => path.to_path_buf(),
        };
        Ok(normalise(&self.base.join(expanded)))
    }
}

/// Lexical clean-up of an absolute path. Folding `..` lexically may differ
/// from the file system when a symlink precedes it; directories that must
/// exist are canonicalised by their users after this.
fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolver() -> PathResolver {
        PathResolver::new("/srv/agentd".into(), Some("/home/ann".into()))
    }

    #[test]
    fn relative_paths_resolve_against_the_start_directory() {
        let r = resolver();
        let abs = |p: &str| r.absolute("x", Path::new(p)).unwrap();
        assert_eq!(abs("data"), PathBuf::from("/srv/agentd/data"));
        assert_eq!(abs("./data/"), PathBuf::from("/srv/agentd/data"));
        assert_eq!(abs("../shared/data"), PathBuf::from("/srv/shared/data"));
        assert_eq!(abs("/var/lib/agentd"), PathBuf::from("/var/lib/agentd"));
        assert_eq!(
            abs("/var/./lib/../lib/agentd"),
            PathBuf::from("/var/lib/agentd")
        );
        assert_eq!(abs("/.."), PathBuf::from("/"));
        assert_eq!(
            abs("trae_config.yaml"),
            PathBuf::from("/srv/agentd/trae_config.yaml")
        );
    }

    #[test]
    fn home_is_expanded_like_a_shell_does() {
        let r = resolver();
        let abs = |p: &str| r.absolute("x", Path::new(p));
        assert_eq!(abs("~"), Ok(PathBuf::from("/home/ann")));
        assert_eq!(
            abs("~/agentd/data"),
            Ok(PathBuf::from("/home/ann/agentd/data"))
        );
        // Not a home reference: a file literally named like that.
        assert_eq!(abs("data/~x"), Ok(PathBuf::from("/srv/agentd/data/~x")));
        assert!(matches!(
            abs("~bob/data"),
            Err(PathError::OtherUsersHome { .. })
        ));
        let homeless = PathResolver::new("/srv".into(), None);
        assert!(matches!(
            homeless.absolute("--data-dir", Path::new("~/d")),
            Err(PathError::NoHome { .. })
        ));
    }

    #[test]
    fn empty_paths_are_refused_with_the_setting_named() {
        let e = resolver()
            .absolute("--data-dir", Path::new(" "))
            .unwrap_err();
        assert_eq!(e.to_string(), "--data-dir is empty");
    }

    proptest::proptest! {
        /// Whatever is configured, the result is absolute and has no `.` or `..`.
        #[test]
        fn results_are_absolute_and_normal(raw in "[a-z./~]{1,30}") {
            if let Ok(p) = resolver().absolute("x", Path::new(&raw)) {
                proptest::prop_assert!(p.is_absolute());
                proptest::prop_assert!(p.components().all(|c| !matches!(c, Component::CurDir | Component::ParentDir)));
            }
        }
    }
}
