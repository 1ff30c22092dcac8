//! `str_replace_based_edit_tool`: view, create, str_replace and insert.
//!
//! Messages follow Trae's so that prompts tuned for it keep working. Unlike
//! Trae, tabs are never expanded: views show the file's real bytes, so an
//! `old_str` copied from a view matches, and Makefiles keep their tabs.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde_json::{Value, json};

use super::args::{Args, as_int, optional_str, required_int, required_str};
use super::clip::{MAX_RESPONSE_CHARS, clip_head, clip_middle};
use super::{Tool, ToolOutput};
use crate::messages::ToolSpec;

pub(crate) const NAME: &str = "str_replace_based_edit_tool";
const COMMANDS: [&str; 4] = ["view", "create", "str_replace", "insert"];
/// Lines of context shown around an edit.
const SNIPPET_LINES: usize = 4;

pub(crate) fn spec() -> ToolSpec {
    ToolSpec {
        name: NAME.into(),
        description: "Custom editing tool for viewing, creating and editing files\n\
* State is persistent across command calls and discussions with the user\n\
* If `path` is a file, `view` displays the result of applying `cat -n`. If `path` is a directory, `view` lists \
non-hidden files and directories up to 2 levels deep\n\
* The `create` command cannot be used if the specified `path` already exists as a file. To replace an existing \
file, remove it first (e.g. with bash) and then `create` it\n\
* If a `command` generates a long output, it will be truncated and marked with `<response clipped>`\n\
\n\
Notes for using the `str_replace` command:\n\
* The `old_str` parameter should match EXACTLY one or more consecutive lines from the original file. Be mindful of \
whitespace!\n\
* If the `old_str` parameter is not unique in the file, the replacement will not be performed. Make sure to include \
enough context in `old_str` to make it unique\n\
* The `new_str` parameter should contain the edited lines that should replace the `old_str`\n"
            .into(),
        parameters: json!({
            "type": "object",
            "properties": {
                "command": {
                    "type": "string",
                    "enum": COMMANDS,
                    "description": "The commands to run. Allowed options are: view, create, str_replace, insert."
                },
                "path": {
                    "type": "string",
                    "description": "Absolute path to file or directory, e.g. `/repo/file.py` or `/repo`."
                },
                "file_text": {
                    "type": "string",
                    "description": "Required parameter of `create` command, with the content of the file to be created."
                },
                "insert_line": {
                    "type": "integer",
                    "description": "Required parameter of `insert` command. The `new_str` will be inserted AFTER the line `insert_line` of `path` (0 inserts at the top)."
                },
                "new_str": {
                    "type": "string",
                    "description": "Optional parameter of `str_replace` command containing the new string (if not given, no string will be added). Required parameter of `insert` command containing the string to insert."
                },
                "old_str": {
                    "type": "string",
                    "description": "Required parameter of `str_replace` command containing the string in `path` to replace."
                },
                "view_range": {
                    "type": "array",
                    "items": { "type": "integer" },
                    "description": "Optional parameter of `view` command when `path` points to a file. If none is given, the full file is shown. If provided, the file will be shown in the indicated line number range, e.g. [11, 12] will show lines 11 and 12. Indexing at 1 to start. Setting `[start_line, -1]` shows all lines from `start_line` to the end of the file."
                }
            },
            "required": ["command", "path"]
        }),
    }
}

pub(crate) struct EditTool;

#[async_trait]
impl Tool for EditTool {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn call(&self, args: &Args) -> ToolOutput {
        super::run_blocking(NAME, args, execute).await
    }
}

fn execute(args: &Args) -> Result<String, String> {
    let command = required_str(args, "command")
        .map_err(|_| format!("No command provided for the {NAME} tool"))?;
    let path =
        required_str(args, "path").map_err(|_| format!("No path provided for the {NAME} tool"))?;
    if !COMMANDS.contains(&command) {
        return Err(format!(
            "Unrecognized command {command}. The allowed commands for the {NAME} tool are: {}",
            COMMANDS.join(", ")
        ));
    }
    let path = PathBuf::from(path);
    validate_path(command, &path)?;
    match command {
        "view" => view(&path, args),
        "create" => {
            let text = required_str(args, "file_text").map_err(|_| {
                "Parameter `file_text` is required and must be a string for command: create"
                    .to_string()
            })?;
            create(&path, text)
        }
        "str_replace" => {
            let old = required_str(args, "old_str").map_err(|_| {
                "Parameter `old_str` is required and should be a string for command: str_replace".to_string()
            })?;
            let new = optional_str(args, "new_str").map_err(|_| {
                "Parameter `new_str` should be a string or null for command: str_replace"
                    .to_string()
            })?;
            str_replace(&path, old, new.unwrap_or(""))
        }
        _ => {
            let line = required_int(args, "insert_line").map_err(|_| {
                "Parameter `insert_line` is required and should be integer for command: insert"
                    .to_string()
            })?;
            let new = required_str(args, "new_str")
                .map_err(|_| "Parameter `new_str` is required for command: insert".to_string())?;
            insert(&path, line, new)
        }
    }
}

fn validate_path(command: &str, path: &Path) -> Result<(), String> {
    if !path.is_absolute() {
        return Err(format!(
            "The path {} is not an absolute path, it should start with `/`. Maybe you meant {}?",
            path.display(),
            Path::new("/").join(path).display()
        ));
    }
    let exists = path.exists();
    if !exists && command != "create" {
        return Err(format!(
            "The path {} does not exist. Please provide a valid path.",
            path.display()
        ));
    }
    if exists && command == "create" {
        return Err(format!(
            "File already exists at: {}. Cannot overwrite files using command `create`.",
            path.display()
        ));
    }
    if path.is_dir() && command != "view" {
        return Err(format!(
            "The path {} is a directory and only the `view` command can be used on directories",
            path.display()
        ));
    }
    Ok(())
}

fn read(path: &Path) -> Result<String, String> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("Ran into {e} while trying to read {}", path.display()))?;
    String::from_utf8(bytes).map_err(|_| {
        format!(
            "The file {} is not UTF-8 text; use bash to inspect binary files.",
            path.display()
        )
    })
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text)
        .map_err(|e| format!("Ran into {e} while trying to write to {}", path.display()))
}

/// The file's lines without terminators; a final newline does not start a
/// new line (unlike Trae's `split("\n")`, which shows a phantom empty line).
fn lines_of(text: &str) -> Vec<&str> {
    text.lines().collect()
}

/// `cat -n` style: six-wide right-aligned numbers, a tab, the line.
fn numbered(lines: &[&str], first_line: usize, descriptor: &str) -> String {
    let mut body = String::new();
    for (i, line) in lines.iter().enumerate() {
        let _ = writeln!(body, "{:6}\t{line}", i + first_line);
    }
    let body = clip_head(body, MAX_RESPONSE_CHARS);
    format!("Here's the result of running `cat -n` on {descriptor}:\n{body}")
}

fn view(path: &Path, args: &Args) -> Result<String, String> {
    let range = match args.get("view_range").filter(|v| !v.is_null()) {
        None => None,
        Some(Value::Array(items)) if items.len() == 2 => {
            match (as_int(&items[0]), as_int(&items[1])) {
                (Some(a), Some(b)) => Some((a, b)),
                _ => {
                    return Err("Invalid `view_range`. It should be a list of two integers.".into());
                }
            }
        }
        Some(_) => return Err("Invalid `view_range`. It should be a list of two integers.".into()),
    };
    if path.is_dir() {
        if range.is_some() {
            return Err(
                "The `view_range` parameter is not allowed when `path` points to a directory."
                    .into(),
            );
        }
        return Ok(view_dir(path));
    }
    let text = read(path)?;
    let lines = lines_of(&text);
    let Some((start, end)) = range else {
        return Ok(numbered(&lines, 1, &path.display().to_string()));
    };
    let n = lines.len() as i64;
    let shown = format!("[{start}, {end}]");
    if start < 1 || start > n {
        return Err(format!(
            "Invalid `view_range`: {shown}. Its first element `{start}` should be within the range of lines of the file: [1, {n}]"
        ));
    }
    if end != -1 && end < start {
        return Err(format!(
            "Invalid `view_range`: {shown}. Its second element `{end}` should be larger or equal than its first `{start}`"
        ));
    }
    // An end past the last line shows up to the last line instead of failing.
    let end = if end == -1 { n } else { end.min(n) };
    let slice = &lines[(start - 1) as usize..end as usize];
    Ok(numbered(slice, start as usize, &path.display().to_string()))
}

/// Like `find <path> -maxdepth 2 -not -path '*/.*'`, sorted for stable output.
fn view_dir(path: &Path) -> String {
    let mut listing = vec![path.display().to_string()];
    fn walk(dir: &Path, depth: usize, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let mut entries: Vec<_> = entries
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .map(|e| e.path())
            .collect();
        entries.sort();
        for entry in entries {
            out.push(entry.display().to_string());
            if depth < 2 && entry.is_dir() && !entry.is_symlink() {
                walk(&entry, depth + 1, out);
            }
        }
    }
    walk(path, 1, &mut listing);
    let text = format!(
        "Here's the files and directories up to 2 levels deep in {}, excluding hidden items:\n{}\n",
        path.display(),
        listing.join("\n")
    );
    clip_head(text, MAX_RESPONSE_CHARS)
}

fn create(path: &Path, text: &str) -> Result<String, String> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| {
            format!(
                "Ran into {e} while trying to create the directory {}",
                parent.display()
            )
        })?;
    }
    write(path, text)?;
    Ok(format!("File created successfully at: {}", path.display()))
}

fn str_replace(path: &Path, old: &str, new: &str) -> Result<String, String> {
    if old.is_empty() {
        return Err("Parameter `old_str` must not be empty for command: str_replace".into());
    }
    let text = read(path)?;
    let starts: Vec<usize> = text.match_indices(old).map(|(i, _)| i).collect();
    // A huge old_str is not worth echoing back whole.
    let quoted = clip_middle(old, 1_000, 0);
    match starts.len() {
        0 => {
            return Err(format!(
                "No replacement was performed, old_str `{quoted}` did not appear verbatim in {}.",
                path.display()
            ));
        }
        1 => {}
        _ => {
            let lines: Vec<String> = starts
                .iter()
                .map(|&i| (text[..i].matches('\n').count() + 1).to_string())
                .collect();
            return Err(format!(
                "No replacement was performed. Multiple occurrences of old_str `{quoted}` in lines [{}] ({} matches). Please ensure it is unique",
                lines.join(", "),
                lines.len()
            ));
        }
    }
    let at = starts[0];
    let new_text = format!("{}{new}{}", &text[..at], &text[at + old.len()..]);
    write(path, &new_text)?;

    let replaced_line = text[..at].matches('\n').count();
    let first = replaced_line.saturating_sub(SNIPPET_LINES);
    let last = replaced_line + SNIPPET_LINES + new.matches('\n').count();
    let lines = lines_of(&new_text);
    let snippet = &lines[first.min(lines.len())..(last + 1).min(lines.len())];
    Ok(format!(
        "The file {p} has been edited. {}Review the changes and make sure they are as expected. Edit the file again if necessary.",
        numbered(
            snippet,
            first + 1,
            &format!("a snippet of {}", path.display())
        ),
        p = path.display()
    ))
}

fn insert(path: &Path, insert_line: i64, new: &str) -> Result<String, String> {
    let text = read(path)?;
    let lines = lines_of(&text);
    let n = lines.len();
    if insert_line < 0 || insert_line as usize > n {
        return Err(format!(
            "Invalid `insert_line` parameter: {insert_line}. It should be within the range of lines of the file: [0, {n}]"
        ));
    }
    let at = insert_line as usize;
    let new_lines = lines_of(new);
    // Edit bytes in place so that the file's line endings (CRLF or LF) and
    // its final newline, or lack of one, are kept.
    let eol = if text.contains("\r\n") { "\r\n" } else { "\n" };
    let body = new_lines.join(eol);
    let new_text = if at == n && !text.is_empty() && !text.ends_with('\n') {
        format!("{text}{eol}{body}")
    } else {
        let offset = if at == 0 {
            0
        } else {
            text.match_indices('\n')
                .nth(at - 1)
                .map_or(text.len(), |(i, _)| i + 1)
        };
        format!("{}{body}{eol}{}", &text[..offset], &text[offset..])
    };
    write(path, &new_text)?;

    let first = at.saturating_sub(SNIPPET_LINES);
    let mut snippet: Vec<&str> = lines[first..at].to_vec();
    snippet.extend_from_slice(&new_lines);
    snippet.extend_from_slice(&lines[at..(at + SNIPPET_LINES).min(n)]);
    Ok(format!(
        "The file {} has been edited. {}Review the changes and make sure they are as expected (correct indentation, no duplicate lines, etc). Edit the file again if necessary.",
        path.display(),
        numbered(&snippet, first + 1, "a snippet of the edited file")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(v: Value) -> Result<String, String> {
        execute(v.as_object().unwrap())
    }

    fn setup(content: &str) -> (tempfile::TempDir, PathBuf, String) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f.py");
        std::fs::write(&file, content).unwrap();
        let p = file.display().to_string();
        (dir, file, p)
    }

    #[test]
    fn view_file_whole_and_ranges() {
        let (_d, _f, p) = setup("a\n\tb\nc\n");
        let out = call(json!({"command": "view", "path": p})).unwrap();
        assert_eq!(
            out,
            format!(
                "Here's the result of running `cat -n` on {p}:\n     1\ta\n     2\t\tb\n     3\tc\n"
            )
        );
        let out = call(json!({"command": "view", "path": p, "view_range": [2, -1]})).unwrap();
        assert!(out.ends_with("     2\t\tb\n     3\tc\n"));
        let out = call(json!({"command": "view", "path": p, "view_range": [2, 99]})).unwrap();
        assert!(out.ends_with("     3\tc\n"));
        let err = call(json!({"command": "view", "path": p, "view_range": [0, 2]})).unwrap_err();
        assert!(
            err.contains("should be within the range of lines of the file: [1, 3]"),
            "{err}"
        );
        let err = call(json!({"command": "view", "path": p, "view_range": [3, 2]})).unwrap_err();
        assert!(
            err.contains("should be larger or equal than its first"),
            "{err}"
        );
        let err = call(json!({"command": "view", "path": p, "view_range": [1]})).unwrap_err();
        assert_eq!(
            err,
            "Invalid `view_range`. It should be a list of two integers."
        );
    }

    #[test]
    fn view_lists_directories_two_levels_without_hidden() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("a/b/c")).unwrap();
        std::fs::create_dir_all(root.join(".git")).unwrap();
        std::fs::write(root.join("a/x.txt"), "").unwrap();
        std::fs::write(root.join(".hidden"), "").unwrap();
        let out = call(json!({"command": "view", "path": root.display().to_string()})).unwrap();
        let r = root.display();
        assert_eq!(
            out,
            format!(
                "Here's the files and directories up to 2 levels deep in {r}, excluding hidden items:\n{r}\n{r}/a\n{r}/a/b\n{r}/a/x.txt\n"
            )
        );
        let err = call(json!({"command": "view", "path": r.to_string(), "view_range": [1, 2]}))
            .unwrap_err();
        assert!(err.contains("not allowed"));
    }

    #[test]
    fn long_views_are_clipped() {
        let content: String = (0..5000).map(|i| format!("line {i}\n")).collect();
        let (_d, _f, p) = setup(&content);
        let out = call(json!({"command": "view", "path": p})).unwrap();
        assert!(out.contains("<response clipped>"));
        assert!(out.chars().count() < MAX_RESPONSE_CHARS + 400);
    }

    #[test]
    fn create_refuses_existing_and_makes_parents() {
        let (dir, _f, p) = setup("x");
        let err = call(json!({"command": "create", "path": p, "file_text": "y"})).unwrap_err();
        assert!(err.starts_with("File already exists at:"));
        let newp = dir.path().join("new/deep/file.txt").display().to_string();
        let out = call(json!({"command": "create", "path": newp, "file_text": "hello\n"})).unwrap();
        assert_eq!(out, format!("File created successfully at: {newp}"));
        assert_eq!(std::fs::read_to_string(&newp).unwrap(), "hello\n");
        let err = call(json!({"command": "create", "path": newp.clone() + "2"})).unwrap_err();
        assert!(err.contains("`file_text` is required"));
    }

    #[test]
    fn str_replace_needs_exactly_one_match() {
        let (_d, f, p) = setup("def f():\n    return 1\n\ndef g():\n    return 1\n");
        let err =
            call(json!({"command": "str_replace", "path": p, "old_str": "return 1"})).unwrap_err();
        assert!(
            err.contains("Multiple occurrences of old_str `return 1` in lines [2, 5] (2 matches)"),
            "{err}"
        );
        let err = call(
            json!({"command": "str_replace", "path": p, "old_str": "return 3", "new_str": "x"}),
        )
        .unwrap_err();
        assert!(err.contains("did not appear verbatim"), "{err}");
        let out = call(json!({"command": "str_replace", "path": p, "old_str": "def g():\n    return 1", "new_str": "def g():\n    return 2"}))
            .unwrap();
        assert!(out.starts_with(&format!("The file {p} has been edited. Here's the result of running `cat -n` on a snippet of {p}:\n")));
        assert!(out.contains("     5\t    return 2\n"), "{out}");
        assert!(out.ends_with("Edit the file again if necessary."));
        assert_eq!(
            std::fs::read_to_string(&f).unwrap(),
            "def f():\n    return 1\n\ndef g():\n    return 2\n"
        );
        // new_str omitted deletes.
        call(json!({"command": "str_replace", "path": p, "old_str": "\ndef g():\n    return 2"}))
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(&f).unwrap(),
            "def f():\n    return 1\n\n"
        );
    }

    #[test]
    fn tabs_are_preserved() {
        let (_d, f, p) = setup("all:\n\techo hi\n");
        call(json!({"command": "view", "path": p})).unwrap();
        call(json!({"command": "str_replace", "path": p, "old_str": "\techo hi", "new_str": "\techo bye"})).unwrap();
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "all:\n\techo bye\n");
    }

    #[test]
    fn insert_after_line() {
        let (_d, f, p) = setup("a\nb\n");
        let out =
            call(json!({"command": "insert", "path": p, "insert_line": 1, "new_str": "x\ny"}))
                .unwrap();
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "a\nx\ny\nb\n");
        assert!(
            out.contains(
                "a snippet of the edited file:\n     1\ta\n     2\tx\n     3\ty\n     4\tb\n"
            ),
            "{out}"
        );
        call(json!({"command": "insert", "path": p, "insert_line": 4, "new_str": "end"})).unwrap();
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "a\nx\ny\nb\nend\n");
        call(json!({"command": "insert", "path": p, "insert_line": 0, "new_str": "top\n"}))
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(&f).unwrap(),
            "top\na\nx\ny\nb\nend\n"
        );
        let err = call(json!({"command": "insert", "path": p, "insert_line": 9, "new_str": "z"}))
            .unwrap_err();
        assert!(
            err.contains("It should be within the range of lines of the file: [0, 6]"),
            "{err}"
        );
        let err = call(json!({"command": "insert", "path": p, "new_str": "z"})).unwrap_err();
        assert!(err.contains("`insert_line` is required"));
    }

    #[test]
    fn insert_keeps_line_endings() {
        let (_d, f, p) = setup("a\r\nb");
        call(json!({"command": "insert", "path": p, "insert_line": 1, "new_str": "x"})).unwrap();
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "a\r\nx\r\nb");
        call(json!({"command": "insert", "path": p, "insert_line": 3, "new_str": "z"})).unwrap();
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "a\r\nx\r\nb\r\nz");
        let (_d2, f2, p2) = setup("");
        call(json!({"command": "insert", "path": p2, "insert_line": 0, "new_str": "first"}))
            .unwrap();
        assert_eq!(std::fs::read_to_string(&f2).unwrap(), "first\n");
    }

    #[test]
    fn path_and_command_errors() {
        let err = call(json!({"command": "view", "path": "rel/x.py"})).unwrap_err();
        assert!(
            err.contains("is not an absolute path") && err.contains("Maybe you meant /rel/x.py?"),
            "{err}"
        );
        let err = call(json!({"command": "view", "path": "/definitely/not/here"})).unwrap_err();
        assert!(err.contains("does not exist"));
        let err = call(json!({"command": "undo_edit", "path": "/tmp"})).unwrap_err();
        assert!(err.starts_with("Unrecognized command undo_edit"));
        let err =
            call(json!({"command": "str_replace", "path": "/tmp", "old_str": "x"})).unwrap_err();
        assert!(err.contains("is a directory"));
        let err = call(json!({"path": "/tmp"})).unwrap_err();
        assert!(err.starts_with("No command provided"));
    }
}
