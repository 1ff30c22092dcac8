//! The two on-disk formats: Trae's YAML and the legacy JSON. Both are parsed
//! leniently (unknown keys ignored), as Trae does.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::{ConfigError, McpServerConfig};

/// `trae_config.yaml`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct YamlFile {
    #[serde(default)]
    pub model_providers: BTreeMap<String, YamlProvider>,
    #[serde(default)]
    pub models: BTreeMap<String, YamlModel>,
    #[serde(default)]
    pub agents: YamlAgents,
    #[serde(default)]
    pub lakeview: Option<YamlLakeview>,
    #[serde(default)]
    pub mcp_servers: BTreeMap<String, McpServerConfig>,
    #[serde(default)]
    pub allow_mcp_servers: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct YamlProvider {
    #[serde(default)]
    pub api_key: Option<String>,
    pub provider: String,
    #[serde(default)]
    pub base_url: Option<String>,
    #[serde(default)]
    pub api_version: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct YamlModel {
    pub model_provider: String,
    pub model: String,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u32>,
    pub parallel_tool_calls: Option<bool>,
    pub max_retries: Option<u32>,
    pub max_tokens: Option<u32>,
    pub supports_tool_calling: Option<bool>,
    pub candidate_count: Option<u32>,
    pub stop_sequences: Option<Vec<String>>,
    pub max_completion_tokens: Option<u32>,
    /// Seconds one attempt of a model call may take.
    pub timeout: Option<f64>,
    /// Ask the provider to stream its answer (agentd's own; default true).
    pub stream: Option<bool>,
}

/// Only `trae_agent` matters; other agents (if any) are ignored.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct YamlAgents {
    pub trae_agent: Option<YamlAgent>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct YamlAgent {
    pub model: String,
    pub max_steps: Option<u32>,
    pub enable_lakeview: Option<bool>,
    pub tools: Option<Vec<String>>,
    /// agentd's own: `max_tokens_total`, `max_cost_usd`, `max_wall_secs`.
    #[serde(flatten)]
    pub budget: crate::agent::Budget,
}

#[derive(Debug, Deserialize)]
pub(crate) struct YamlLakeview {
    pub model: Option<String>,
}

/// The legacy `trae_config.json`: one entry per provider kind.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct LegacyFile {
    pub default_provider: Option<String>,
    pub max_steps: Option<u32>,
    pub enable_lakeview: Option<bool>,
    #[serde(default)]
    pub model_providers: BTreeMap<String, LegacyProvider>,
    #[serde(default)]
    pub mcp_servers: BTreeMap<String, McpServerConfig>,
    #[serde(default)]
    pub allow_mcp_servers: Vec<String>,
    #[serde(flatten)]
    pub budget: crate::agent::Budget,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct LegacyProvider {
    pub model: Option<String>,
    pub api_key: Option<String>,
    pub base_url: Option<String>,
    pub api_version: Option<String>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u32>,
    pub max_retries: Option<u32>,
    pub parallel_tool_calls: Option<bool>,
    pub supports_tool_calling: Option<bool>,
    pub candidate_count: Option<u32>,
    pub stop_sequences: Option<Vec<String>>,
    pub max_completion_tokens: Option<u32>,
    /// Seconds one attempt of a model call may take.
    pub timeout: Option<f64>,
    /// Ask the provider to stream its answer (agentd's own; default true).
    pub stream: Option<bool>,
}

pub(crate) enum Parsed {
    Yaml(Box<YamlFile>),
    Legacy(Box<LegacyFile>),
}

/// A `.json` extension always means the legacy format; anything else is YAML.
pub(crate) fn is_legacy(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
}

pub(crate) fn parse(path: &Path, text: &str) -> Result<Parsed, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        path: path.to_path_buf(),
        message: elide_quoted(&redact_keys(message, text)),
    };
    if is_legacy(path) {
        serde_json::from_str::<LegacyFile>(text)
            .map(|f| Parsed::Legacy(Box::new(f)))
            .map_err(|e| invalid(e.to_string()))
    } else if text.trim().is_empty() {
        // An empty YAML document is null; treat it as an empty file.
        Ok(Parsed::Yaml(Box::default()))
    } else {
        serde_norway::from_str::<YamlFile>(text)
            .map(|f| Parsed::Yaml(Box::new(f)))
            .map_err(|e| invalid(e.to_string()))
    }
}

/// Parser messages quote the values they stumbled on. `/api/config` takes a
/// client-chosen path, so a message must not carry a file's contents (e.g.
/// `?config_file=/etc/passwd`): quoted values become `"…"`, leaving the error
/// kind, field names and position.
fn elide_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut in_quote = false;
    for ch in message.chars() {
        match (ch, in_quote) {
            ('"', false) => {
                in_quote = true;
                out.push_str("\"…");
            }
            ('"', true) => {
                in_quote = false;
                out.push('"');
            }
            (_, true) => {}
            (c, false) => out.push(c),
        }
    }
    out
}

/// Parser messages may quote values; make sure none of the file's api keys
/// survives into an error (which may be shown to API clients).
fn redact_keys(mut message: String, text: &str) -> String {
    for key in api_key_values(text) {
        if key.len() >= 4 {
            message = message.replace(&key, "[redacted]");
        }
    }
    message
}

/// Every string under a key named `api_key`, found leniently (the file may
/// not parse as a whole). Line-based so it works on YAML and JSON alike.
fn api_key_values(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("api_key") {
        rest = &rest[i + "api_key".len()..];
        let line = rest.split(['\n', ',', '}']).next().unwrap_or_default();
        let value = line
            .trim_start_matches(['"', '\''])
            .trim_start()
            .trim_start_matches(':')
            .trim();
        let value = value.trim_matches(['"', '\'', ' ']);
        if !value.is_empty() {
            out.push(value.to_string());
        }
    }
    out
}

#[cfg(test)]
mod elide_tests {
    #[test]
    fn quoted_values_are_elided() {
        assert_eq!(
            super::elide_quoted(
                r#"invalid type: string "root:x:0:0:root", expected struct at line 1 column 1"#
            ),
            r#"invalid type: string "…", expected struct at line 1 column 1"#
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_key_values_found_in_yaml_and_json() {
        let yaml = "a:\n  api_key: sk-yaml-123\n  x: 1\n";
        assert_eq!(api_key_values(yaml), vec!["sk-yaml-123"]);
        let json = r#"{"p": {"api_key": "sk-json-456", "x": 1}}"#;
        assert_eq!(api_key_values(json), vec!["sk-json-456"]);
    }
}
