//! The languages the code knowledge graph reads, by file extension, and their
//! tree-sitter grammars.

use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lang {
    Python,
    Java,
    C,
    Cpp,
    JavaScript,
    TypeScript,
    Tsx,
    Rust,
}

impl Lang {
    /// Trae's extension map (`.h` is C, as there), plus Rust.
    pub(crate) fn of(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?;
        Some(match ext {
            "py" => Self::Python,
            "java" => Self::Java,
            "c" | "h" => Self::C,
            "cpp" | "hpp" | "c++" | "cxx" | "cc" => Self::Cpp,
            "js" | "jsx" => Self::JavaScript,
            "ts" => Self::TypeScript,
            // TSX needs its own grammar: the TypeScript one reads `<T>x` as a cast.
            "tsx" => Self::Tsx,
            "rs" => Self::Rust,
            _ => return None,
        })
    }

    pub(crate) fn grammar(self) -> tree_sitter::Language {
        match self {
            Self::Python => tree_sitter_python::LANGUAGE.into(),
            Self::Java => tree_sitter_java::LANGUAGE.into(),
            Self::C => tree_sitter_c::LANGUAGE.into(),
            Self::Cpp => tree_sitter_cpp::LANGUAGE.into(),
            Self::JavaScript => tree_sitter_javascript::LANGUAGE.into(),
            Self::TypeScript => tree_sitter_typescript::LANGUAGE_TYPESCRIPT.into(),
            Self::Tsx => tree_sitter_typescript::LANGUAGE_TSX.into(),
            Self::Rust => tree_sitter_rust::LANGUAGE.into(),
        }
    }
}
