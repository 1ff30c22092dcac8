//! MCP servers as tools (Trae's `mcp_servers` / `allow_mcp_servers`).
//!
//! As in Trae, only the servers named in `allow_mcp_servers` are started,
//! once per run, and each tool they list is offered to the model under its
//! own name (made safe for every provider: `[A-Za-z0-9_-]`, at most 64
//! characters) with its JSON schema, next to the built-in tools. Unlike
//! Trae, which skips a server that fails to start, a server that does not
//! start or initialise within its timeout fails the run before its first
//! step: the user configured it and would otherwise not learn why its
//! tools are missing. A tool name offered twice is refused the same way.

mod content;
mod process;
mod server;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::join_all;
use serde_json::Value;

use crate::config::McpServerConfig;
use crate::messages::ToolSpec;
use crate::tools::args::Args;
use crate::tools::process_group::ProcessObserver;
use crate::tools::{Tool, ToolOutput};

pub(crate) use server::McpServer;
use server::StartContext;

/// Longest tool name the providers accept (OpenAI's limit).
const MAX_TOOL_NAME: usize = 64;

/// A server could not be used; the message names it and says why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("MCP server '{server}' {message}")]
pub struct McpError {
    pub server: String,
    pub message: String,
}

impl McpError {
    fn new(server: &str, message: impl Into<String>) -> Self {
        Self {
            server: server.to_string(),
            message: message.into(),
        }
    }
}

/// Limits of MCP servers.
#[derive(Debug, Clone)]
pub struct McpOptions {
    /// Start, initialise and list tools; a server's own `timeout` wins.
    pub start_timeout: Duration,
    /// One tool call.
    pub call_timeout: Duration,
}

impl Default for McpOptions {
    fn default() -> Self {
        Self {
            start_timeout: Duration::from_secs(30),
            call_timeout: Duration::from_secs(300),
        }
    }
}

/// The configured servers that a run starts: those `allow` names, in the
/// configuration's order. Names in `allow` that no entry defines are
/// ignored, as upstream does.
pub fn allowed_servers<'a>(
    servers: &'a BTreeMap<String, McpServerConfig>,
    allow: &[String],
) -> Vec<(&'a str, &'a McpServerConfig)> {
    servers
        .iter()
        .filter(|(name, _)| allow.iter().any(|a| a == *name))
        .map(|(name, cfg)| (name.as_str(), cfg))
        .collect()
}

/// The servers of one run and the tools they offer.
pub(crate) struct McpTools {
    pub(crate) servers: Vec<Arc<McpServer>>,
    pub(crate) tools: Vec<(McpTool, ToolSpec)>,
}

/// Where and how a run's servers start.
pub(crate) struct McpStart<'a> {
    pub(crate) working_dir: &'a Path,
    pub(crate) observer: Option<Arc<dyn ProcessObserver>>,
    pub(crate) options: &'a McpOptions,
    pub(crate) kill_grace: Duration,
}

/// Starts every server at once and lists their tools. `taken` are the names
/// already offered (the built-in tools). On any failure the servers that did
/// start are ended again.
pub(crate) async fn start(
    servers: &[(&str, &McpServerConfig)],
    taken: &[String],
    start: McpStart<'_>,
) -> Result<McpTools, McpError> {
    let ctx = StartContext {
        working_dir: start.working_dir,
        observer: start.observer,
        start_timeout: start.options.start_timeout,
        call_timeout: start.options.call_timeout,
        kill_grace: start.kill_grace,
    };
    let started = join_all(
        servers
            .iter()
            .map(|(name, cfg)| McpServer::start(name, cfg, &ctx)),
    )
    .await;
    let mut ok = Vec::new();
    let mut first_error = None;
    for result in started {
        match result {
            Ok(server) => ok.push(server),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    let collected = match first_error {
        Some(e) => Err(e),
        None => collect_tools(&ok, taken),
    };
    match collected {
        Ok(tools) => Ok(McpTools {
            servers: ok.into_iter().map(|(s, _)| s).collect(),
            tools,
        }),
        Err(e) => {
            join_all(ok.iter().map(|(s, _)| s.shutdown(start.kill_grace))).await;
            Err(e)
        }
    }
}

fn collect_tools(
    servers: &[(Arc<McpServer>, Vec<rmcp::model::Tool>)],
    taken: &[String],
) -> Result<Vec<(McpTool, ToolSpec)>, McpError> {
    let mut offered: Vec<(String, String)> = taken
        .iter()
        .map(|t| (t.clone(), "the built-in tools".to_string()))
        .collect();
    let mut tools = Vec::new();
    for (server, defs) in servers {
        for def in defs {
            let spec = tool_spec(def);
            if let Some((_, owner)) = offered.iter().find(|(n, _)| *n == spec.name) {
                return Err(McpError::new(
                    server.name(),
                    format!(
                        "offers a tool named `{}`, a name {owner} already use; \
                         leave one of them out of allow_mcp_servers or tools",
                        spec.name
                    ),
                ));
            }
            offered.push((spec.name.clone(), format!("MCP server '{}'", server.name())));
            let tool = McpTool {
                name: spec.name.clone(),
                remote_name: def.name.to_string(),
                server: server.clone(),
            };
            tools.push((tool, spec));
        }
    }
    Ok(tools)
}

/// A tool of an MCP server as the model sees it.
fn tool_spec(def: &rmcp::model::Tool) -> ToolSpec {
    let mut parameters = Value::Object((*def.input_schema).clone());
    // Providers want an object schema with properties.
    if let Value::Object(schema) = &mut parameters {
        schema
            .entry("type")
            .or_insert_with(|| Value::from("object"));
        schema
            .entry("properties")
            .or_insert_with(|| Value::Object(Default::default()));
    }
    let description = def
        .description
        .as_deref()
        .or(def.title.as_deref())
        .unwrap_or_default()
        .to_string();
    ToolSpec {
        name: model_name(&def.name),
        description,
        parameters,
    }
}

/// A name every provider accepts: other characters become `_`.
fn model_name(name: &str) -> String {
    name.chars()
        .map(
            |c| match c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                true => c,
                false => '_',
            },
        )
        .take(MAX_TOOL_NAME)
        .collect()
}

/// One tool of a running server.
pub(crate) struct McpTool {
    name: String,
    remote_name: String,
    server: Arc<McpServer>,
}

#[async_trait]
impl Tool for McpTool {
    fn name(&self) -> &str {
        &self.name
    }

    async fn call(&self, args: &Args) -> ToolOutput {
        self.server.call(&self.remote_name, args.clone()).await
    }
}

/// What `/api/tools?include_mcp=true` lists: each allowed server's tools as
/// the model would see them. The servers are started for the listing only
/// (in `working_dir`) and ended again.
pub async fn list_tools(
    servers: &[(&str, &McpServerConfig)],
    working_dir: &Path,
    options: &McpOptions,
) -> Result<Vec<(String, ToolSpec)>, McpError> {
    let started = start(
        servers,
        &[],
        McpStart {
            working_dir,
            observer: None,
            options,
            kill_grace: Duration::from_secs(1),
        },
    )
    .await?;
    let listed = started
        .tools
        .iter()
        .map(|(tool, spec)| (tool.server.name().to_string(), spec.clone()))
        .collect();
    join_all(
        started
            .servers
            .iter()
            .map(|s| s.shutdown(Duration::from_secs(1))),
    )
    .await;
    Ok(listed)
}

impl McpTools {
    /// Ends every server (their process groups, for stdio servers).
    pub(crate) async fn shutdown(servers: &[Arc<McpServer>], grace: Duration) {
        join_all(servers.iter().map(|s| s.shutdown(grace))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_made_safe_for_every_provider() {
        assert_eq!(model_name("get-sum"), "get-sum");
        assert_eq!(model_name("fs.read file"), "fs_read_file");
        assert_eq!(model_name(&"x".repeat(80)).len(), 64);
    }

    #[test]
    fn only_allowed_servers_start() {
        let mut servers = BTreeMap::new();
        for name in ["a", "b", "c"] {
            servers.insert(name.to_string(), McpServerConfig::default());
        }
        let allow = ["c".to_string(), "a".to_string(), "zzz".to_string()];
        let names: Vec<_> = allowed_servers(&servers, &allow)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["a", "c"]);
        assert!(allowed_servers(&servers, &[]).is_empty());
    }
}
