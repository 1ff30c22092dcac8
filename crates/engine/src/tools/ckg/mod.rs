//! `ckg`: Trae's code knowledge graph. Finds functions, classes and class
//! methods by name in a codebase (Python, Java, C, C++, JavaScript,
//! TypeScript and, beyond Trae, Rust), parsed with tree-sitter.
//!
//! The name, description, parameters and answers are Trae's. The index lives
//! in memory for the run and is cached per file (see [`index`]); parsing
//! runs on the blocking pool.

mod extract;
mod index;
mod lang;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::json;

use super::args::{Args, optional_bool, optional_str};
use super::clip::MAX_RESPONSE_CHARS;
use super::{Tool, ToolOutput};
use crate::messages::ToolSpec;
use extract::{ClassEntry, FileEntries, FunctionEntry};
pub(crate) use index::Limits;
use index::{Index, Snapshot};

pub(crate) const NAME: &str = "ckg";
const COMMANDS: [&str; 3] = ["search_function", "search_class", "search_class_method"];

pub(crate) fn spec() -> ToolSpec {
    ToolSpec {
        name: NAME.into(),
        description: "Query the code knowledge graph of a codebase.\n\
* State is persistent across command calls and discussions with the user\n\
* The `search_function` command searches for functions in the codebase\n\
* The `search_class` command searches for classes in the codebase\n\
* The `search_class_method` command searches for class methods in the codebase\n\
* If a `command` generates a long output, it will be truncated and marked with `<response clipped>`\n\
* If multiple entries are found, the tool will return all of them until the truncation is reached.\n\
* By default, the tool will print function or class bodies as well as the file path and line number of the \
function or class. You can disable this by setting the `print_body` parameter to `false`.\n\
* The CKG is not completely accurate, and may not be able to find all functions or classes in the codebase.\n"
            .into(),
        parameters: json!({
            "type": "object",
            "properties": {
                "command": {
                    "type": "string",
                    "enum": COMMANDS,
                    "description": "The command to run. Allowed options are search_function, search_class, search_class_method."
                },
                "path": {
                    "type": "string",
                    "description": "The path to the codebase."
                },
                "identifier": {
                    "type": "string",
                    "description": "The identifier of the function or class to search for in the code knowledge graph."
                },
                "print_body": {
                    "type": "boolean",
                    "description": "Whether to print the body of the function or class. This is enabled by default."
                }
            },
            "required": ["command", "path", "identifier"]
        }),
    }
}

pub(crate) struct CkgTool {
    working_dir: PathBuf,
    index: Arc<Index>,
}

impl CkgTool {
    pub(crate) fn new(working_dir: PathBuf) -> Self {
        Self::with_limits(working_dir, Limits::default())
    }

    pub(crate) fn with_limits(working_dir: PathBuf, limits: Limits) -> Self {
        Self {
            working_dir,
            index: Arc::new(Index::new(limits)),
        }
    }

    /// Files parsed so far: a query answered from the cache adds none.
    #[cfg(test)]
    pub(crate) fn parses(&self) -> usize {
        self.index.parses()
    }
}

#[derive(Debug, Clone, Copy)]
enum Command {
    Function,
    Class,
    ClassMethod,
}

struct Query {
    command: Command,
    path: PathBuf,
    identifier: String,
    print_body: bool,
}

impl CkgTool {
    /// Trae's checks and messages, in its order; the command is checked
    /// before any indexing.
    fn query(&self, args: &Args) -> Result<Query, String> {
        let command = present(args, "command")?;
        let path = present(args, "path")?;
        let identifier = present(args, "identifier")?;
        let print_body = optional_bool(args, "print_body")?.unwrap_or(true);
        let command = match command {
            "search_function" => Command::Function,
            "search_class" => Command::Class,
            "search_class_method" => Command::ClassMethod,
            other => {
                return Err(format!(
                    "Invalid command: {other}. Allowed options are {}.",
                    COMMANDS.join(", ")
                ));
            }
        };
        // A relative path is taken in the working directory, like bash's.
        let resolved = tidy(&self.working_dir.join(path));
        if !resolved.exists() {
            return Err(format!("Codebase path {path} does not exist"));
        }
        if !resolved.is_dir() {
            return Err(format!("Codebase path {path} is not a directory"));
        }
        Ok(Query {
            command,
            path: resolved,
            identifier: identifier.to_string(),
            print_body,
        })
    }
}

/// `a/./b` → `a/b`, `a/b/../c` → `a/c`: the paths answers show (and the
/// cache's keys) are the same however the model spelled the directory.
fn tidy(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

fn present<'a>(args: &'a Args, key: &str) -> Result<&'a str, String> {
    optional_str(args, key)?.ok_or_else(|| format!("No {key} provided for the {NAME} tool"))
}

#[async_trait]
impl Tool for CkgTool {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn call(&self, args: &Args) -> ToolOutput {
        let query = match self.query(args) {
            Ok(q) => q,
            Err(e) => return ToolOutput::error(e),
        };
        let index = self.index.clone();
        match tokio::task::spawn_blocking(move || answer(&index.snapshot(&query.path), &query))
            .await
        {
            Ok(output) => ToolOutput::ok(output),
            Err(e) => ToolOutput::error(format!("The {NAME} tool failed: {e}")),
        }
    }
}

/// One definition found.
enum Hit<'a> {
    Function(&'a Path, &'a FileEntries, &'a FunctionEntry),
    Class(&'a Path, &'a FileEntries, &'a ClassEntry),
}

/// Trae's answer: a count, then `n. path:start-end` per entry (with fields,
/// methods and bodies as asked), cut after [`MAX_RESPONSE_CHARS`] characters.
fn answer(snapshot: &Snapshot, query: &Query) -> String {
    let id = query.identifier.as_str();
    let mut hits = Vec::new();
    for (path, file) in &snapshot.files {
        match query.command {
            Command::Function | Command::ClassMethod => {
                let methods = matches!(query.command, Command::ClassMethod);
                hits.extend(
                    file.functions
                        .iter()
                        .filter(|f| f.name == id && f.parent_class.is_some() == methods)
                        .map(|f| Hit::Function(path, file, f)),
                );
            }
            Command::Class => hits.extend(
                file.classes
                    .iter()
                    .filter(|c| c.name == id)
                    .map(|c| Hit::Class(path, file, c)),
            ),
        }
    }
    let kind = match query.command {
        Command::Function => "functions",
        Command::Class => "classes",
        Command::ClassMethod => "class methods",
    };
    let mut out = if hits.is_empty() {
        format!("No {kind} named {id} found.")
    } else {
        clipped_list(
            format!("Found {} {kind} named {id}:\n", hits.len()),
            &hits,
            query.print_body,
        )
    };
    if let Some(note) = &snapshot.incomplete {
        let _ = write!(out, "\n(The index is incomplete: {note}.)");
    }
    out
}

fn render(hit: &Hit<'_>, print_body: bool) -> String {
    match *hit {
        Hit::Function(path, file, f) => {
            let mut s = format!("{}:{}-{}", path.display(), f.start_line, f.end_line);
            if let Some(class) = &f.parent_class {
                let _ = write!(s, " within class {class}");
            }
            s.push('\n');
            if print_body {
                let _ = write!(s, "{}\n\n", file.text(&f.body));
            }
            s
        }
        Hit::Class(path, file, c) => {
            let mut s = format!("{}:{}-{}\n", path.display(), c.start_line, c.end_line);
            if let Some(fields) = &c.fields {
                let _ = writeln!(s, "Fields:\n{fields}");
            }
            if let Some(methods) = &c.methods {
                let _ = writeln!(s, "Methods:\n{methods}");
            }
            if print_body {
                let _ = write!(s, "{}\n\n", file.text(&c.body));
            }
            s
        }
    }
}

/// Numbers the entries; once the text passes the limit it is cut there and
/// the entries not reached are counted (Trae's rule).
/// Entries are rendered only until then.
fn clipped_list(mut out: String, hits: &[Hit<'_>], print_body: bool) -> String {
    let mut chars = out.chars().count();
    for (i, hit) in hits.iter().enumerate() {
        let numbered = format!("{}. {}", i + 1, render(hit, print_body));
        chars += numbered.chars().count();
        out.push_str(&numbered);
        if chars > MAX_RESPONSE_CHARS {
            let cut = out
                .char_indices()
                .nth(MAX_RESPONSE_CHARS)
                .map_or(out.len(), |(at, _)| at);
            out.truncate(cut);
            let _ = write!(
                out,
                "\n<response clipped> {} more entries not shown",
                hits.len() - i - 1
            );
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests;
