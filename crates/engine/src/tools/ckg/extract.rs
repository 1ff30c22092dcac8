//! What counts as a function, a class and a class method in each language,
//! read from a tree-sitter syntax tree.
//!
//! Trae's rules, with its gaps filled where they hid plain definitions:
//! - Python: `def` is a class method when its innermost enclosing definition
//!   is a `class`, else a function (so a `def` nested in a method is a
//!   function, as in Trae). Classes list `- name(params) -> ret` per method.
//! - Java: classes (`class_declaration`) list their fields and method
//!   signatures; a method is a class method when some class encloses it.
//! - C: every `function_definition` is a function. C has no classes.
//! - C++: as C, plus `class`/`struct` bodies (Trae: `class` only) with their
//!   fields and method declarations; a definition inside a class, or defined
//!   out of line as `Scope::name` (Trae: a function named `Scope::name`), is a
//!   class method.
//! - JavaScript / TypeScript: classes and their `method_definition`s as in
//!   Trae, plus what Trae misses: `function` declarations and functions bound
//!   by `const f = () => ...` / `function () ...` are functions.
//! - Rust (not in Trae): `struct`/`enum`/`union`/`trait` are classes (fields,
//!   variants; methods gathered from the file's `impl` blocks); an `fn` in an
//!   `impl` or `trait` is a class method of that type, any other `fn` a function.

use std::ops::Range;
use std::rc::Rc;

use tree_sitter::{Node, Parser};

use super::lang::Lang;

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FunctionEntry {
    pub(crate) name: String,
    /// Where the definition is in [`FileEntries::source`].
    pub(crate) body: Range<usize>,
    pub(crate) start_line: usize,
    pub(crate) end_line: usize,
    /// Set for a class method (its class), `None` for a function.
    pub(crate) parent_class: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ClassEntry {
    pub(crate) name: String,
    pub(crate) body: Range<usize>,
    pub(crate) start_line: usize,
    pub(crate) end_line: usize,
    /// `- field` lines.
    pub(crate) fields: Option<String>,
    /// `- signature` lines.
    pub(crate) methods: Option<String>,
}

/// The definitions of one file, in source order, with the file's text: the
/// bodies are ranges of it (nested definitions share their text).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct FileEntries {
    pub(crate) source: String,
    pub(crate) functions: Vec<FunctionEntry>,
    pub(crate) classes: Vec<ClassEntry>,
}

impl FileEntries {
    pub(crate) fn text(&self, range: &Range<usize>) -> &str {
        self.source.get(range.clone()).unwrap_or("")
    }
}

#[derive(Default)]
struct Definitions {
    functions: Vec<FunctionEntry>,
    classes: Vec<ClassEntry>,
}

/// Parses `source` and extracts its definitions. `parser` may hold any
/// language; it is switched to `lang`.
pub(crate) fn extract(parser: &mut Parser, lang: Lang, source: String) -> FileEntries {
    let mut found = Definitions::default();
    if parser.set_language(&lang.grammar()).is_ok()
        && let Some(tree) = parser.parse(&source, None)
    {
        let mut extractor = Extractor {
            lang,
            src: &source,
            out: Definitions::default(),
            impl_methods: Vec::new(),
        };
        extractor.walk(tree.root_node());
        found = extractor.finish();
    }
    FileEntries {
        functions: found.functions,
        classes: found.classes,
        source,
    }
}

/// Where a node sits: its nearest enclosing class, and whether that class is
/// also the innermost enclosing definition (no function in between).
#[derive(Clone, Default)]
struct Scope {
    class: Option<Rc<str>>,
    directly_in_class: bool,
}

impl Scope {
    fn enter_class(name: &str) -> Self {
        Self {
            class: Some(name.into()),
            directly_in_class: true,
        }
    }
    fn enter_function(&self) -> Self {
        Self {
            class: self.class.clone(),
            directly_in_class: false,
        }
    }
    /// The class of a method by Python's/Rust's rule: the innermost definition.
    fn innermost_class(&self) -> Option<String> {
        self.class
            .as_deref()
            .filter(|_| self.directly_in_class)
            .map(str::to_string)
    }
    /// The class of a method by Trae's rule for Java, C++ and JavaScript: any
    /// enclosing class.
    fn any_class(&self) -> Option<String> {
        self.class.as_deref().map(str::to_string)
    }
}

struct Extractor<'s> {
    lang: Lang,
    src: &'s str,
    out: Definitions,
    /// Rust: (type, signature) of each `fn` in an `impl` block.
    impl_methods: Vec<(String, String)>,
}

impl<'s> Extractor<'s> {
    /// Depth-first in source order, with an explicit stack: generated code
    /// can nest deeper than a thread's stack allows recursion.
    fn walk(&mut self, root: Node<'_>) {
        let mut stack = vec![(root, Scope::default())];
        let mut cursor = root.walk();
        while let Some((node, scope)) = stack.pop() {
            let inner = self.visit(node, &scope).unwrap_or(scope);
            let first = stack.len();
            stack.extend(
                node.named_children(&mut cursor)
                    .map(|child| (child, inner.clone())),
            );
            stack[first..].reverse();
        }
    }

    /// Records `node` if it is a definition; returns the scope of its children
    /// when it opens one.
    fn visit(&mut self, node: Node<'_>, scope: &Scope) -> Option<Scope> {
        match self.lang {
            Lang::Python => self.python(node, scope),
            Lang::Java => self.java(node, scope),
            Lang::C => self.c_family(node, scope, false),
            Lang::Cpp => self.c_family(node, scope, true),
            Lang::JavaScript | Lang::TypeScript | Lang::Tsx => self.javascript(node, scope),
            Lang::Rust => self.rust(node, scope),
        }
    }

    fn python(&mut self, node: Node<'_>, scope: &Scope) -> Option<Scope> {
        match node.kind() {
            "function_definition" => {
                let name = self.field_text(node, "name")?;
                self.function(node, name, scope.innermost_class());
                Some(scope.enter_function())
            }
            "class_definition" => {
                let name = self.field_text(node, "name")?;
                let mut methods = Vec::new();
                for child in self.body_children(node, "body") {
                    let def = match child.kind() {
                        "decorated_definition" => child.child_by_field_name("definition"),
                        "function_definition" => Some(child),
                        _ => None,
                    };
                    let Some(def) = def.filter(|d| d.kind() == "function_definition") else {
                        continue;
                    };
                    let Some(method) = self.field_text(def, "name") else {
                        continue;
                    };
                    let mut line = method.to_string();
                    if let Some(params) = self.field_text(def, "parameters") {
                        line.push_str(params);
                    }
                    if let Some(ret) = self.field_text(def, "return_type") {
                        line.push_str(" -> ");
                        line.push_str(ret);
                    }
                    methods.push(line);
                }
                self.class(node, name, Vec::new(), methods);
                Some(Scope::enter_class(name))
            }
            _ => None,
        }
    }

    fn java(&mut self, node: Node<'_>, scope: &Scope) -> Option<Scope> {
        match node.kind() {
            "class_declaration" => {
                let name = self.field_text(node, "name")?;
                let (mut fields, mut methods) = (Vec::new(), Vec::new());
                for child in self.body_children(node, "body") {
                    match child.kind() {
                        "field_declaration" => fields.push(self.text(child).to_string()),
                        "method_declaration" => methods.push(self.signature(child, "block")),
                        _ => {}
                    }
                }
                self.class(node, name, fields, methods);
                Some(Scope::enter_class(name))
            }
            "method_declaration" => {
                let name = self.field_text(node, "name")?;
                self.function(node, name, scope.any_class());
                Some(scope.enter_function())
            }
            _ => None,
        }
    }

    fn c_family(&mut self, node: Node<'_>, scope: &Scope, cpp: bool) -> Option<Scope> {
        match node.kind() {
            "class_specifier" | "struct_specifier" if cpp => {
                let name = self.field_text(node, "name")?;
                // `class Foo;` declares; only a body defines.
                node.child_by_field_name("body")?;
                let (mut fields, mut methods) = (Vec::new(), Vec::new());
                for child in self.body_children(node, "body") {
                    match child.kind() {
                        "function_definition" => {
                            methods.push(self.signature(child, "compound_statement"))
                        }
                        "field_declaration" => {
                            let mut cursor = child.walk();
                            let is_method = child
                                .children(&mut cursor)
                                .any(|c| c.kind() == "function_declarator");
                            let line = self.text(child).to_string();
                            if is_method {
                                methods.push(line);
                            } else {
                                fields.push(line);
                            }
                        }
                        _ => {}
                    }
                }
                self.class(node, name, fields, methods);
                Some(Scope::enter_class(name))
            }
            "function_definition" => {
                let declarator = function_name_node(node.child_by_field_name("declarator")?)?;
                let (name, qualifier) = if declarator.kind() == "qualified_identifier" {
                    split_qualified(declarator, self.src)?
                } else {
                    (self.text(declarator), None)
                };
                let parent = if cpp {
                    scope.any_class().or(qualifier)
                } else {
                    None
                };
                self.function(node, name, parent);
                Some(scope.enter_function())
            }
            _ => None,
        }
    }

    fn javascript(&mut self, node: Node<'_>, scope: &Scope) -> Option<Scope> {
        match node.kind() {
            "class_declaration" | "abstract_class_declaration" => {
                let name = self.field_text(node, "name")?;
                let (mut fields, mut methods) = (Vec::new(), Vec::new());
                for child in self.body_children(node, "body") {
                    match child.kind() {
                        "method_definition" => {
                            methods.push(self.signature(child, "statement_block"))
                        }
                        // TypeScript's name; JavaScript's is `field_definition`.
                        "public_field_definition" | "field_definition" => {
                            fields.push(self.text(child).to_string())
                        }
                        _ => {}
                    }
                }
                self.class(node, name, fields, methods);
                Some(Scope::enter_class(name))
            }
            "method_definition" => {
                let name = self.field_text(node, "name")?;
                self.function(node, name, scope.any_class());
                Some(scope.enter_function())
            }
            "function_declaration" | "generator_function_declaration" => {
                let name = self.field_text(node, "name")?;
                self.function(node, name, None);
                Some(scope.enter_function())
            }
            "variable_declarator" => {
                let value = node.child_by_field_name("value")?;
                let is_function = matches!(
                    value.kind(),
                    "arrow_function" | "function_expression" | "function" | "generator_function"
                );
                let name_node = node.child_by_field_name("name")?;
                if !is_function || name_node.kind() != "identifier" {
                    return None;
                }
                // The whole `const f = ...;` when it declares only `f`.
                let shown = node
                    .parent()
                    .filter(|p| {
                        matches!(p.kind(), "lexical_declaration" | "variable_declaration")
                            && p.named_child_count() == 1
                    })
                    .unwrap_or(node);
                let name = self.text(name_node);
                self.function(shown, name, None);
                Some(scope.enter_function())
            }
            _ => None,
        }
    }

    fn rust(&mut self, node: Node<'_>, scope: &Scope) -> Option<Scope> {
        match node.kind() {
            "function_item" => {
                let name = self.field_text(node, "name")?;
                self.function(node, name, scope.innermost_class());
                Some(scope.enter_function())
            }
            "impl_item" => {
                let type_name = rust_type_name(node.child_by_field_name("type")?, self.src);
                for child in self.body_children(node, "body") {
                    if child.kind() == "function_item" {
                        let signature = self.rust_signature(child);
                        self.impl_methods.push((type_name.to_string(), signature));
                    }
                }
                Some(Scope::enter_class(type_name))
            }
            "trait_item" => {
                let name = self.field_text(node, "name")?;
                let methods = self
                    .body_children(node, "body")
                    .into_iter()
                    .filter(|c| matches!(c.kind(), "function_item" | "function_signature_item"))
                    .map(|c| self.rust_signature(c))
                    .collect();
                self.class(node, name, Vec::new(), methods);
                Some(Scope::enter_class(name))
            }
            "struct_item" | "enum_item" | "union_item" => {
                let name = self.field_text(node, "name")?;
                let fields = self
                    .body_children(node, "body")
                    .into_iter()
                    .filter(|c| matches!(c.kind(), "field_declaration" | "enum_variant"))
                    .map(|c| self.text(c).to_string())
                    .collect();
                self.class(node, name, fields, Vec::new());
                Some(Scope::enter_class(name))
            }
            _ => None,
        }
    }

    fn finish(mut self) -> Definitions {
        if !self.impl_methods.is_empty() {
            for class in &mut self.out.classes {
                let from_impls: Vec<&str> = self
                    .impl_methods
                    .iter()
                    .filter(|(ty, _)| *ty == class.name)
                    .map(|(_, sig)| sig.as_str())
                    .collect();
                if !from_impls.is_empty() && class.methods.is_none() {
                    class.methods = bullet_list(from_impls);
                }
            }
        }
        self.out
    }

    fn function(&mut self, node: Node<'_>, name: &str, parent_class: Option<String>) {
        let (start_line, end_line) = lines(node);
        self.out.functions.push(FunctionEntry {
            name: name.to_string(),
            body: node.byte_range(),
            start_line,
            end_line,
            parent_class,
        });
    }

    fn class(&mut self, node: Node<'_>, name: &str, fields: Vec<String>, methods: Vec<String>) {
        let (start_line, end_line) = lines(node);
        self.out.classes.push(ClassEntry {
            name: name.to_string(),
            body: node.byte_range(),
            start_line,
            end_line,
            fields: bullet_list(fields),
            methods: bullet_list(methods),
        });
    }

    fn text(&self, node: Node<'_>) -> &'s str {
        self.src.get(node.byte_range()).unwrap_or("")
    }

    fn field_text(&self, node: Node<'_>, field: &str) -> Option<&'s str> {
        node.child_by_field_name(field).map(|n| self.text(n))
    }

    /// The named children of `node`'s `field` (a class body).
    fn body_children<'t>(&self, node: Node<'t>, field: &str) -> Vec<Node<'t>> {
        let Some(body) = node.child_by_field_name(field) else {
            return Vec::new();
        };
        let mut cursor = body.walk();
        body.named_children(&mut cursor).collect()
    }

    /// A declaration up to its body, its parts joined by spaces (Trae's
    /// rendering of Java, C++ and JavaScript methods).
    fn signature(&self, node: Node<'_>, body_kind: &str) -> String {
        let mut cursor = node.walk();
        node.children(&mut cursor)
            .take_while(|c| c.kind() != body_kind)
            .map(|c| self.text(c))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// A Rust `fn` up to its body, as written.
    fn rust_signature(&self, node: Node<'_>) -> String {
        let end = node
            .child_by_field_name("body")
            .map_or(node.end_byte(), |b| b.start_byte());
        let text = self.src.get(node.start_byte()..end).unwrap_or("");
        text.trim().trim_end_matches(';').trim_end().to_string()
    }
}

/// One-based first and last line of `node`.
fn lines(node: Node<'_>) -> (usize, usize) {
    (node.start_position().row + 1, node.end_position().row + 1)
}

fn bullet_list<S: AsRef<str>>(items: Vec<S>) -> Option<String> {
    if items.is_empty() {
        return None;
    }
    Some(
        items
            .iter()
            .map(|i| format!("- {}", i.as_ref()))
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

/// The name inside a C/C++ declarator: through pointers, references and
/// parentheses to the function declarator's own `declarator`.
fn function_name_node(mut node: Node<'_>) -> Option<Node<'_>> {
    loop {
        match node.kind() {
            "function_declarator" => return node.child_by_field_name("declarator"),
            "pointer_declarator"
            | "reference_declarator"
            | "parenthesized_declarator"
            | "attributed_declarator" => {
                node = match node.child_by_field_name("declarator") {
                    Some(inner) => inner,
                    None => node.named_child(
                        u32::try_from(node.named_child_count())
                            .ok()?
                            .checked_sub(1)?,
                    )?,
                };
            }
            _ => return None,
        }
    }
}

/// `a::B::name` → (`name`, `Some("a::B")`).
fn split_qualified<'s>(node: Node<'_>, src: &'s str) -> Option<(&'s str, Option<String>)> {
    let text = |n: Node<'_>| src.get(n.byte_range()).unwrap_or("");
    let mut scopes = Vec::new();
    let mut current = node;
    while current.kind() == "qualified_identifier" {
        if let Some(scope) = current.child_by_field_name("scope") {
            scopes.push(text(scope));
        }
        current = current.child_by_field_name("name")?;
    }
    let qualifier = (!scopes.is_empty()).then(|| scopes.join("::"));
    Some((text(current), qualifier))
}

/// The type an `impl` is for, without generics or path: `impl<T> a::Foo<T>` → `Foo`.
fn rust_type_name<'s>(mut node: Node<'_>, src: &'s str) -> &'s str {
    loop {
        let inner = match node.kind() {
            "generic_type" => node.child_by_field_name("type"),
            "scoped_type_identifier" => node.child_by_field_name("name"),
            "reference_type" => node.child_by_field_name("type"),
            _ => None,
        };
        match inner {
            Some(inner) => node = inner,
            None => return src.get(node.byte_range()).unwrap_or(""),
        }
    }
}
