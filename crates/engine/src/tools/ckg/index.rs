//! The definitions under a directory, cached per source file.
//!
//! Trae hashes the whole codebase (git status, or every file's metadata) and
//! rebuilds its whole database when anything changed. Here each file is kept
//! with the size and modification time it was parsed at: a query walks the
//! directory (a `stat` per file, no reads) and parses only files that are new
//! or changed, so an edit between two queries costs one parse, and a
//! sub-directory of an indexed directory costs none.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use ignore::WalkBuilder;
use tree_sitter::Parser;

use super::extract::{FileEntries, extract};
use super::lang::Lang;

/// Directories never indexed even when no `.gitignore` names them (hidden
/// ones, `.git` and `.venv` among them, are skipped anyway).
const SKIPPED_DIRS: [&str; 5] = [
    "node_modules",
    "target",
    "__pycache__",
    "venv",
    "site-packages",
];

/// Bounds that keep a huge working directory from stalling a run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Source files indexed per query; the rest are left out (and the answer says so).
    pub(crate) max_files: usize,
    /// Larger files (generated or vendored code, mostly) are skipped.
    pub(crate) max_file_bytes: u64,
    /// Directory entries looked at per query, source or not.
    pub(crate) max_entries: usize,
    /// Parsing stops after this long (at least one file is parsed per query);
    /// what was parsed stays cached, so the next query goes on from there.
    pub(crate) max_parse_time: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_files: 20_000,
            max_file_bytes: 1024 * 1024,
            max_entries: 200_000,
            max_parse_time: Duration::from_secs(30),
        }
    }
}

struct Cached {
    len: u64,
    modified: Option<SystemTime>,
    entries: Arc<FileEntries>,
}

/// What a query sees: each indexed file's definitions, in path order.
pub(crate) struct Snapshot {
    pub(crate) files: Vec<(PathBuf, Arc<FileEntries>)>,
    /// Set when a limit cut the walk short: what was left out.
    pub(crate) incomplete: Option<String>,
}

/// One tool instance's cache (one run's), keyed by file path.
pub(crate) struct Index {
    files: Mutex<HashMap<PathBuf, Cached>>,
    parses: AtomicUsize,
    limits: Limits,
}

impl Index {
    pub(crate) fn new(limits: Limits) -> Self {
        Self {
            files: Mutex::new(HashMap::new()),
            parses: AtomicUsize::new(0),
            limits,
        }
    }

    /// Files parsed so far (cache misses).
    #[cfg(test)]
    pub(crate) fn parses(&self) -> usize {
        self.parses.load(Ordering::Relaxed)
    }

    /// The definitions under `dir`, parsing only what the cache lacks. Blocking.
    pub(crate) fn snapshot(&self, dir: &Path) -> Snapshot {
        // One query at a time: a second one waits and then finds the files cached.
        let mut cache = self.files.lock().unwrap_or_else(|e| e.into_inner());
        let mut parser = Parser::new();
        let mut files = Vec::new();
        let mut seen = HashSet::new();
        let mut incomplete = None;
        // Set once parsing took too long: cached files are still answered from.
        let mut out_of_time = None;
        let started = Instant::now();
        for (walked, entry) in self.walker(dir).enumerate() {
            if walked >= self.limits.max_entries {
                incomplete = Some(format!(
                    "only the first {} entries under {} were looked at",
                    self.limits.max_entries,
                    dir.display()
                ));
                break;
            }
            let Ok(entry) = entry else { continue };
            if !entry.file_type().is_some_and(|t| t.is_file()) {
                continue;
            }
            let Some(lang) = Lang::of(entry.path()) else {
                continue;
            };
            if files.len() >= self.limits.max_files {
                incomplete = Some(format!(
                    "only the first {} source files under {} were indexed",
                    self.limits.max_files,
                    dir.display()
                ));
                break;
            }
            let Ok(meta) = entry.metadata() else { continue };
            let path = entry.into_path();
            seen.insert(path.clone());
            let (len, modified) = (meta.len(), meta.modified().ok());
            let entries = match cache.get(&path) {
                Some(c) if c.len == len && c.modified == modified => c.entries.clone(),
                _ if out_of_time.is_some() => continue,
                _ => {
                    let Ok(bytes) = std::fs::read(&path) else {
                        continue;
                    };
                    // Offsets stay valid: the parser reads the same (repaired) text.
                    let source = String::from_utf8(bytes)
                        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
                    let entries = Arc::new(extract(&mut parser, lang, source));
                    self.parses.fetch_add(1, Ordering::Relaxed);
                    cache.insert(
                        path.clone(),
                        Cached {
                            len,
                            modified,
                            entries: entries.clone(),
                        },
                    );
                    if out_of_time.is_none() && started.elapsed() > self.limits.max_parse_time {
                        out_of_time = Some(path.clone());
                    }
                    entries
                }
            };
            files.push((path, entries));
        }
        if let Some(last) = out_of_time {
            incomplete.get_or_insert(format!(
                "parsing stopped after {} s (last parsed: {}); files not parsed yet are left out, ask again to \
                 index more",
                self.limits.max_parse_time.as_secs(),
                last.display()
            ));
        }
        // Forget deleted (or newly ignored) files, unless the walk stopped early.
        if incomplete.is_none() {
            cache.retain(|path, _| !path.starts_with(dir) || seen.contains(path));
        }
        Snapshot { files, incomplete }
    }

    /// Source files the way git sees them: `.gitignore`d, hidden and
    /// [`SKIPPED_DIRS`] entries and files over the size cap left out, in
    /// a stable order, symlinks not followed.
    fn walker(&self, dir: &Path) -> ignore::Walk {
        WalkBuilder::new(dir)
            .hidden(true)
            .git_global(false)
            .require_git(false)
            .follow_links(false)
            .max_filesize(Some(self.limits.max_file_bytes))
            .sort_by_file_name(|a, b| a.cmp(b))
            .filter_entry(|e| {
                !(e.depth() > 0
                    && e.file_type().is_some_and(|t| t.is_dir())
                    && e.file_name()
                        .to_str()
                        .is_some_and(|n| SKIPPED_DIRS.contains(&n)))
            })
            .build()
    }
}
