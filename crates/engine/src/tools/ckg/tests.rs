use std::path::Path;

use serde_json::{Value, json};

use super::*;

/// A small repository in every indexed language, plus files the index must skip.
const FIXTURE: &[(&str, &str)] = &[
    (
        "py/shapes.py",
        r#"import math


def area(radius):
    return math.pi * radius ** 2


class Circle:
    def __init__(self, radius):
        self.radius = radius

    def area(self) -> float:
        def square(x):
            return x * x
        return math.pi * square(self.radius)

    @staticmethod
    def unit():
        return Circle(1)
"#,
    ),
    (
        "java/Calculator.java",
        r#"public class Calculator {
    private int total = 0;

    public int add(int a, int b) {
        total += a + b;
        return total;
    }
}
"#,
    ),
    (
        "c/util.c",
        r#"#include <string.h>

int clamp(int v, int lo, int hi) {
    return v < lo ? lo : v > hi ? hi : v;
}

static char *dup_name(const char *s) {
    return strdup(s);
}
"#,
    ),
    (
        "cpp/stack.cpp",
        r#"class Stack {
    int size_;
public:
    void push(int v) { size_++; }
    int pop();
};

int Stack::pop() {
    return --size_;
}

int helper() { return 1; }
"#,
    ),
    (
        "js/app.js",
        r#"class Greeter {
  greeting = "hi";
  greet(name) {
    return `${this.greeting} ${name}`;
  }
}

function formatName(n) {
  return n.trim();
}

const shout = (s) => s.toUpperCase();
"#,
    ),
    (
        "ts/store.ts",
        r#"export class Store<T> {
  private items: T[] = [];
  add(item: T): void {
    this.items.push(item);
  }
}

export function createStore<T>(): Store<T> {
  return new Store<T>();
}
"#,
    ),
    (
        "ts/view.tsx",
        r#"export function View(props: { name: string }) {
  return <div>{props.name}</div>;
}
"#,
    ),
    (
        "rs/counter.rs",
        r#"pub struct Counter {
    count: u32,
}

impl Counter {
    pub fn increment(&mut self) -> u32 {
        fn step() -> u32 { 1 }
        self.count += step();
        self.count
    }
}

pub trait Named {
    fn name(&self) -> String;
}

pub fn helper() -> u32 {
    7
}
"#,
    ),
    // Skipped: dependencies, hidden directories, .gitignored files, other languages.
    ("node_modules/dep/index.js", "function formatName() {}\n"),
    (".cache/gen.py", "def area():\n    pass\n"),
    ("build/gen.py", "def area():\n    pass\n"),
    (".gitignore", "build/\n"),
    ("notes.txt", "def area(): pass\n"),
];

fn fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in FIXTURE {
        write(dir.path(), path, text);
    }
    dir
}

fn write(root: &Path, path: &str, text: &str) {
    let path = root.join(path);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn args(v: Value) -> Args {
    match v {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

async fn search(tool: &CkgTool, dir: &Path, command: &str, id: &str, print_body: bool) -> String {
    let out = tool
        .call(&args(json!({
            "command": command,
            "path": dir.display().to_string(),
            "identifier": id,
            "print_body": print_body,
        })))
        .await;
    assert_eq!(out.error, None, "{command} {id}: {out:?}");
    out.output
}

#[tokio::test]
async fn finds_functions_in_each_language() {
    let dir = fixture();
    let root = dir.path();
    let tool = CkgTool::new(root.to_path_buf());
    let cases = [
        ("area", "py/shapes.py:4-5"),
        ("add", ""), // a Java method is a class method, never a function
        ("clamp", "c/util.c:3-5"),
        ("dup_name", "c/util.c:7-9"),
        ("formatName", "js/app.js:8-10"),
        ("shout", "js/app.js:12-12"),
        ("createStore", "ts/store.ts:8-10"),
        ("View", "ts/view.tsx:1-3"),
        ("square", "py/shapes.py:13-14"), // nested in a method: a function (Trae's rule)
        ("step", "rs/counter.rs:7-7"),
    ];
    for (id, place) in cases {
        let out = search(&tool, root, "search_function", id, true).await;
        if place.is_empty() {
            assert_eq!(out, format!("No functions named {id} found."));
            continue;
        }
        let expected = format!(
            "Found 1 functions named {id}:\n1. {}\n",
            root.join(place).display()
        );
        assert!(out.starts_with(&expected), "{id}: {out}");
    }
    // Two `helper`s: C++ and Rust, in path order, each with its body.
    let out = search(&tool, root, "search_function", "helper", true).await;
    assert!(
        out.starts_with("Found 2 functions named helper:\n1. "),
        "{out}"
    );
    assert!(
        out.contains("cpp/stack.cpp:12-12\nint helper() { return 1; }\n\n2. "),
        "{out}"
    );
    assert!(
        out.ends_with("rs/counter.rs:17-19\npub fn helper() -> u32 {\n    7\n}\n\n"),
        "{out}"
    );
    let out = search(&tool, root, "search_function", "shout", true).await;
    assert!(
        out.contains("\nconst shout = (s) => s.toUpperCase();\n"),
        "{out}"
    );
}

#[tokio::test]
async fn finds_classes_with_their_fields_and_methods() {
    let dir = fixture();
    let root = dir.path();
    let tool = CkgTool::new(root.to_path_buf());
    let out = search(&tool, root, "search_class", "Circle", false).await;
    assert_eq!(
        out,
        format!(
            "Found 1 classes named Circle:\n1. {}:8-19\nMethods:\n- __init__(self, radius)\n- area(self) -> float\n- unit()\n",
            root.join("py/shapes.py").display()
        )
    );
    let out = search(&tool, root, "search_class", "Calculator", false).await;
    assert!(
        out.ends_with(
            "java/Calculator.java:1-8\nFields:\n- private int total = 0;\nMethods:\n- public int add (int a, int b)\n"
        ),
        "{out}"
    );
    let out = search(&tool, root, "search_class", "Stack", false).await;
    assert!(
        out.ends_with(
            "cpp/stack.cpp:1-6\nFields:\n- int size_;\nMethods:\n- void push(int v)\n- int pop();\n"
        ),
        "{out}"
    );
    let out = search(&tool, root, "search_class", "Greeter", false).await;
    assert!(
        out.ends_with("js/app.js:1-6\nFields:\n- greeting = \"hi\"\nMethods:\n- greet (name)\n"),
        "{out}"
    );
    let out = search(&tool, root, "search_class", "Store", false).await;
    assert!(
        out.ends_with("ts/store.ts:1-6\nFields:\n- private items: T[] = []\nMethods:\n- add (item: T) : void\n"),
        "{out}"
    );
    let out = search(&tool, root, "search_class", "Counter", false).await;
    assert!(
        out.ends_with(
            "rs/counter.rs:1-3\nFields:\n- count: u32\nMethods:\n- pub fn increment(&mut self) -> u32\n"
        ),
        "{out}"
    );
    let out = search(&tool, root, "search_class", "Named", false).await;
    assert!(
        out.ends_with("rs/counter.rs:13-15\nMethods:\n- fn name(&self) -> String\n"),
        "{out}"
    );
    // The body is printed by default.
    let out = search(&tool, root, "search_class", "Calculator", true).await;
    assert!(
        out.ends_with("        return total;\n    }\n}\n\n"),
        "{out}"
    );
    // C has no classes.
    let out = search(&tool, root, "search_class", "clamp", true).await;
    assert_eq!(out, "No classes named clamp found.");
}

#[tokio::test]
async fn finds_class_methods_with_their_class() {
    let dir = fixture();
    let root = dir.path();
    let tool = CkgTool::new(root.to_path_buf());
    let cases = [
        ("area", "py/shapes.py:12-15 within class Circle"),
        ("unit", "py/shapes.py:18-19 within class Circle"),
        ("add", "java/Calculator.java:4-7 within class Calculator"),
        ("push", "cpp/stack.cpp:4-4 within class Stack"),
        ("pop", "cpp/stack.cpp:8-10 within class Stack"), // defined out of line
        ("greet", "js/app.js:3-5 within class Greeter"),
        ("add", "java/Calculator.java:4-7 within class Calculator"),
        ("increment", "rs/counter.rs:6-10 within class Counter"),
    ];
    for (id, place) in cases {
        let out = search(&tool, root, "search_class_method", id, false).await;
        let mut matched = out.lines().filter(|l| l.ends_with(place));
        assert!(matched.next().is_some(), "{id}: {out}");
    }
    let out = search(&tool, root, "search_class_method", "add", false).await;
    assert!(
        out.starts_with("Found 2 class methods named add:\n"),
        "{out}"
    );
    assert!(
        out.contains("ts/store.ts:3-5 within class Store\n"),
        "{out}"
    );
    // Without the body, only the places.
    assert_eq!(out.lines().count(), 3, "{out}");
    let out = search(&tool, root, "search_class_method", "increment", true).await;
    assert!(
        out.contains("within class Counter\npub fn increment(&mut self) -> u32 {\n"),
        "{out}"
    );
    // A function is no class method.
    let out = search(&tool, root, "search_class_method", "clamp", true).await;
    assert_eq!(out, "No class methods named clamp found.");
}

#[tokio::test]
async fn skips_dependencies_hidden_and_ignored_files() {
    let dir = fixture();
    let root = dir.path();
    let tool = CkgTool::new(root.to_path_buf());
    let out = search(&tool, root, "search_function", "area", false).await;
    assert_eq!(
        out,
        format!(
            "Found 1 functions named area:\n1. {}:4-5\n",
            root.join("py/shapes.py").display()
        )
    );
    let out = search(&tool, root, "search_function", "formatName", false).await;
    assert!(out.starts_with("Found 1 functions"), "{out}");
    // 8 source files parsed, nothing else.
    assert_eq!(tool.parses(), 8);
}

#[tokio::test]
async fn a_second_call_hits_the_cache_and_a_change_reparses_one_file() {
    let dir = fixture();
    let root = dir.path();
    let tool = CkgTool::new(root.to_path_buf());
    search(&tool, root, "search_function", "clamp", false).await;
    assert_eq!(tool.parses(), 8);
    search(&tool, root, "search_class", "Circle", false).await;
    search(&tool, root, "search_class_method", "greet", false).await;
    assert_eq!(tool.parses(), 8, "unchanged files were parsed again");
    // A sub-directory is answered from the same cache, by relative path too.
    let out = search(&tool, &root.join("c"), "search_function", "clamp", false).await;
    assert!(out.starts_with("Found 1"), "{out}");
    let out = tool
        .call(&args(
            json!({"command": "search_function", "path": "./py/../c/", "identifier": "clamp"}),
        ))
        .await;
    let place = format!("\n1. {}:3-5\nint clamp(", root.join("c/util.c").display());
    assert!(out.output.contains(&place), "{out:?}");
    assert_eq!(tool.parses(), 8);

    // Edit one file (a different size, so the change shows even on a coarse clock).
    write(root, "c/util.c", "int clamp_all(void) { return 0; }\n");
    let out = search(&tool, root, "search_function", "clamp", false).await;
    assert_eq!(out, "No functions named clamp found.");
    let out = search(&tool, root, "search_function", "clamp_all", false).await;
    assert!(out.ends_with("c/util.c:1-1\n"), "{out}");
    assert_eq!(tool.parses(), 9);
    // A deleted file is forgotten.
    std::fs::remove_file(root.join("js/app.js")).unwrap();
    let out = search(&tool, root, "search_class", "Greeter", false).await;
    assert_eq!(out, "No classes named Greeter found.");
    assert_eq!(tool.parses(), 9);
}

#[tokio::test]
async fn bad_arguments_are_tool_errors() {
    let dir = fixture();
    let root = dir.path();
    let tool = CkgTool::new(root.to_path_buf());
    let call = |v: Value| {
        let tool = &tool;
        async move { tool.call(&args(v)).await.error.unwrap_or_default() }
    };
    let missing = root.join("missing").display().to_string();
    let file = root.join("c/util.c").display().to_string();
    let cases = [
        (json!({"path": ".", "identifier": "x"}), "No command provided for the ckg tool".to_string()),
        (json!({"command": "search_class", "identifier": "x"}), "No path provided for the ckg tool".into()),
        (json!({"command": "search_class", "path": "."}), "No identifier provided for the ckg tool".into()),
        (
            json!({"command": "search_class", "path": missing, "identifier": "x"}),
            format!("Codebase path {missing} does not exist"),
        ),
        (
            json!({"command": "search_class", "path": file, "identifier": "x"}),
            format!("Codebase path {file} is not a directory"),
        ),
        (
            json!({"command": "find", "path": ".", "identifier": "x"}),
            "Invalid command: find. Allowed options are search_function, search_class, search_class_method.".into(),
        ),
        (
            json!({"command": "search_class", "path": ".", "identifier": "x", "print_body": 3}),
            "Parameter `print_body` must be a boolean, got a number".into(),
        ),
    ];
    for (input, error) in cases {
        assert_eq!(call(input.clone()).await, error, "{input}");
    }
    // Nothing was indexed for a refused call.
    assert_eq!(tool.parses(), 0);
}

#[tokio::test]
async fn long_answers_are_clipped_with_a_count_of_what_is_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let body = format!("    return \"{}\"\n", "x".repeat(1_000));
    for i in 0..40 {
        write(
            dir.path(),
            &format!("m{i:02}.py"),
            &format!("def dup():\n{body}"),
        );
    }
    let tool = CkgTool::new(dir.path().to_path_buf());
    let out = search(&tool, dir.path(), "search_function", "dup", true).await;
    assert!(out.starts_with("Found 40 functions named dup:\n"), "{out}");
    let (kept, note) = out.rsplit_once("\n<response clipped> ").unwrap();
    assert_eq!(kept.chars().count(), MAX_RESPONSE_CHARS);
    // ~1,050 characters an entry: the 16th passes the limit, 24 are not reached.
    let started = kept
        .lines()
        .filter(|l| l.ends_with("m00.py:1-2") || l.contains(".py:1-2"))
        .count();
    assert_eq!(started, 16, "{kept}");
    assert_eq!(note, format!("{} more entries not shown", 40 - started));
    // Without bodies all 40 fit.
    let out = search(&tool, dir.path(), "search_function", "dup", false).await;
    assert_eq!(out.lines().count(), 41);
}

#[tokio::test]
async fn limits_bound_the_index_and_say_so() {
    let dir = fixture();
    let root = dir.path();
    write(
        root,
        "big.py",
        &format!("def big():\n{}", "    x = 1\n".repeat(200)),
    );
    let limits = Limits {
        max_files: 3,
        max_file_bytes: 1_000,
        max_entries: 1_000,
        ..Limits::default()
    };
    let tool = CkgTool::with_limits(root.to_path_buf(), limits);
    let out = search(&tool, root, "search_function", "big", false).await;
    // Too large: skipped. Only 3 files indexed: the answer says so.
    assert!(out.starts_with("No functions named big found.\n(The index is incomplete: only the first 3 source files under "), "{out}");
    assert_eq!(tool.parses(), 3);
    let limits = Limits {
        max_entries: 2,
        ..Limits::default()
    };
    let tool = CkgTool::with_limits(root.to_path_buf(), limits);
    let out = search(&tool, root, "search_class", "Circle", false).await;
    assert!(
        out.contains("(The index is incomplete: only the first 2 entries under "),
        "{out}"
    );
}

#[tokio::test]
async fn a_parse_time_limit_indexes_a_little_more_each_call() {
    let dir = fixture();
    let root = dir.path();
    let limits = Limits {
        max_parse_time: std::time::Duration::ZERO,
        ..Limits::default()
    };
    // Out of time after every parse: one more file each call, cached ones still answered from.
    let tool = CkgTool::with_limits(root.to_path_buf(), limits);
    let out = search(&tool, root, "search_function", "clamp", false).await;
    assert!(out.starts_with("Found 1 functions named clamp:\n"), "{out}");
    assert!(
        out.contains("\n(The index is incomplete: parsing stopped after 0 s (last parsed: "),
        "{out}"
    );
    assert_eq!(tool.parses(), 1);
    for parsed in 2..=8 {
        let out = search(&tool, root, "search_class", "Counter", false).await;
        assert_eq!(tool.parses(), parsed);
        // rs/counter.rs sorts sixth of the eight (c, cpp, java, js, py, rs, ts, ts).
        assert_eq!(
            out.starts_with("Found 1 classes"),
            parsed >= 6,
            "{parsed}: {out}"
        );
    }
    // All parsed: complete answers from the cache.
    let out = search(&tool, root, "search_class", "Counter", false).await;
    assert!(!out.contains("incomplete"), "{out}");
    assert_eq!(tool.parses(), 8);
}

#[test]
fn deep_nesting_does_not_overflow_the_stack() {
    // 20,000 nested lists: a recursive walk would need far more stack.
    let source = format!(
        "x = {}{}\n\ndef after():\n    pass\n",
        "[".repeat(20_000),
        "]".repeat(20_000)
    );
    let mut parser = tree_sitter::Parser::new();
    let entries = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || extract::extract(&mut parser, lang::Lang::Python, source))
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(entries.functions.len(), 1);
    assert_eq!(entries.functions[0].name, "after");
}

/// Indexing cost on a real tree (a measurement, not a check):
/// `CKG_BENCH_DIR=/some/repo cargo test -p agentd-engine --release ckg_index_timing -- --ignored --nocapture`
#[test]
#[ignore]
fn ckg_index_timing() {
    let Some(dir) = std::env::var_os("CKG_BENCH_DIR") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let index = index::Index::new(Limits::default());
    for round in ["cold", "warm"] {
        let started = std::time::Instant::now();
        let snapshot = index.snapshot(&dir);
        let (functions, classes) = snapshot.files.iter().fold((0, 0), |(f, c), (_, e)| {
            (f + e.functions.len(), c + e.classes.len())
        });
        println!(
            "{round}: {} files, {functions} functions, {classes} classes, {} parses so far, {:?}{}",
            snapshot.files.len(),
            index.parses(),
            started.elapsed(),
            snapshot
                .incomplete
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        );
    }
}
