//! One connected MCP server: its client session (rmcp) over the process's
//! pipes or Streamable HTTP, the tools it listed, and its calls.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rmcp::ServiceExt as _;
use rmcp::model::{CallToolRequestParams, JsonObject, Tool as McpToolDef};
use rmcp::service::{Peer, RoleClient, RunningService, ServiceError};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::Value;
use tokio::sync::Mutex;

use super::McpError;
use super::content;
use super::process::{Launch, ServerProcess};
use crate::config::McpServerConfig;
use crate::tools::ToolOutput;
use crate::tools::process_group::ProcessObserver;

/// How a configured server is reached.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Endpoint<'a> {
    Stdio { command: &'a str },
    Http { url: &'a str },
}

/// Trae's order: `http_url` (Streamable HTTP), then `url`, then `command`.
/// `url` means SSE upstream, which Trae never implemented; the servers
/// that serve it today speak Streamable HTTP, so it is taken as that.
pub(super) fn endpoint<'a>(name: &str, cfg: &'a McpServerConfig) -> Result<Endpoint<'a>, McpError> {
    let nonempty = |v: &'a Option<String>| v.as_deref().map(str::trim).filter(|s| !s.is_empty());
    if let Some(url) = nonempty(&cfg.http_url).or(nonempty(&cfg.url)) {
        return Ok(Endpoint::Http { url });
    }
    match nonempty(&cfg.command) {
        Some(command) => Ok(Endpoint::Stdio { command }),
        None => Err(McpError::new(
            name,
            "needs a `command` (stdio) or an `http_url`/`url` (Streamable HTTP)",
        )),
    }
}

pub(crate) struct McpServer {
    name: String,
    peer: Peer<RoleClient>,
    /// Kept to close the session; `None` once closed.
    session: Mutex<Option<RunningService<RoleClient, ()>>>,
    /// The stdio server's process; `None` for HTTP servers.
    process: Mutex<Option<ServerProcess>>,
    pid: Option<i32>,
    call_timeout: Duration,
}

impl std::fmt::Debug for McpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpServer")
            .field("name", &self.name)
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

/// What starting a server needs besides its configuration.
pub(super) struct StartContext<'a> {
    pub(super) working_dir: &'a Path,
    pub(super) observer: Option<Arc<dyn ProcessObserver>>,
    pub(super) start_timeout: Duration,
    pub(super) call_timeout: Duration,
    pub(super) kill_grace: Duration,
}

impl McpServer {
    /// Starts (stdio) or reaches (HTTP) the server, initialises the session
    /// and lists its tools, all within the start timeout (the server's own
    /// `timeout`, if set).
    pub(super) async fn start(
        name: &str,
        cfg: &McpServerConfig,
        ctx: &StartContext<'_>,
    ) -> Result<(Arc<Self>, Vec<McpToolDef>), McpError> {
        let timeout = cfg
            .timeout
            .and_then(|t| Duration::try_from_secs_f64(t).ok())
            .filter(|t| !t.is_zero())
            .unwrap_or(ctx.start_timeout);
        let (session, process) = match endpoint(name, cfg)? {
            Endpoint::Stdio { command } => {
                let cwd = match cfg.cwd.as_deref().filter(|c| !c.trim().is_empty()) {
                    Some(cwd) => ctx.working_dir.join(cwd),
                    None => ctx.working_dir.to_path_buf(),
                };
                let launch = Launch {
                    server: name,
                    command,
                    args: &cfg.args,
                    env: &cfg.env,
                    cwd: &cwd,
                };
                let (process, stdout, stdin) = ServerProcess::spawn(launch, ctx.observer.clone())
                    .await
                    .map_err(|e| {
                        McpError::new(name, format!("could not start `{command}`: {e}"))
                    })?;
                let session = tokio::time::timeout(timeout, ().serve((stdout, stdin))).await;
                (session.map(|s| s.map_err(|e| e.to_string())), Some(process))
            }
            Endpoint::Http { url } => {
                let transport = http_transport(name, url, cfg)?;
                let session = tokio::time::timeout(timeout, ().serve(transport)).await;
                (session.map(|s| s.map_err(|e| e.to_string())), None)
            }
        };
        let session = match session {
            Err(_) => {
                let why = format!("did not initialise within {} s", timeout.as_secs_f64());
                return Err(failed(name, process, why, ctx.kill_grace).await);
            }
            Ok(Err(e)) => {
                let why = format!("failed to initialise: {e}");
                return Err(failed(name, process, why, ctx.kill_grace).await);
            }
            Ok(Ok(session)) => session,
        };
        let peer = session.peer().clone();
        let tools = match tokio::time::timeout(timeout, peer.list_all_tools()).await {
            Err(_) => Err(format!(
                "did not list its tools within {} s",
                timeout.as_secs_f64()
            )),
            Ok(Err(e)) => Err(format!("could not list its tools: {e}")),
            Ok(Ok(tools)) => Ok(tools),
        };
        let tools = match tools {
            Ok(tools) => tools,
            Err(why) => {
                drop(session);
                return Err(failed(name, process, why, ctx.kill_grace).await);
            }
        };
        let pid = process.as_ref().map(ServerProcess::pid);
        let server = Self {
            name: name.to_string(),
            peer,
            session: Mutex::new(Some(session)),
            process: Mutex::new(process),
            pid,
            call_timeout: ctx.call_timeout,
        };
        Ok((Arc::new(server), tools))
    }

    pub(super) fn name(&self) -> &str {
        &self.name
    }

    /// Calls one of the server's tools. Never fails: a tool error, a timeout
    /// or a server that went away is an unsuccessful result for the model.
    pub(super) async fn call(&self, tool: &str, arguments: JsonObject) -> ToolOutput {
        let params = CallToolRequestParams::new(tool.to_string()).with_arguments(arguments);
        match tokio::time::timeout(self.call_timeout, self.peer.call_tool(params)).await {
            Err(_) => ToolOutput::error(format!(
                "The MCP tool `{tool}` of server '{}' did not answer within {} s.",
                self.name,
                self.call_timeout.as_secs_f64()
            )),
            Ok(Ok(result)) => {
                let blocks: Vec<Value> = result
                    .content
                    .iter()
                    .filter_map(|b| serde_json::to_value(b).ok())
                    .collect();
                content::to_output(
                    &blocks,
                    result.structured_content.as_ref(),
                    result.is_error.unwrap_or(false),
                )
            }
            Ok(Err(e)) => ToolOutput::error(self.call_error(tool, e).await),
        }
    }

    async fn call_error(&self, tool: &str, e: ServiceError) -> String {
        let mut message = format!(
            "Error running MCP tool `{tool}` of server '{}': {e}",
            self.name
        );
        // A closed transport usually means the server died: its stdout is
        // closed a moment before its exit can be collected.
        let gone = matches!(
            e,
            ServiceError::TransportClosed | ServiceError::TransportSend(_)
        );
        if let Some(process) = self.process.lock().await.as_mut()
            && let Some(status) = process
                .exited_within(match gone {
                    true => Duration::from_millis(500),
                    false => Duration::ZERO,
                })
                .await
        {
            message.push_str(&format!(
                ". The server is no longer running ({status}); its tools cannot be used in this run."
            ));
        }
        message
    }

    /// Closes the session and ends the server's process group.
    pub(super) async fn shutdown(&self, grace: Duration) {
        if let Some(mut session) = self.session.lock().await.take() {
            // The session's own task ends with it; a server that does not
            // let go is ended below anyway.
            let _ = tokio::time::timeout(Duration::from_secs(1), session.close()).await;
        }
        if let Some(process) = self.process.lock().await.as_mut() {
            process.terminate(grace).await;
        }
    }
}

/// The error of a server that could not be used, with how its process
/// ended and the last lines of its stderr; the process is ended first.
async fn failed(
    name: &str,
    process: Option<ServerProcess>,
    why: String,
    grace: Duration,
) -> McpError {
    let mut message = why;
    if let Some(mut p) = process {
        if let Some(status) = p.exit_status() {
            message.push_str(&format!(" (the server exited: {status})"));
        }
        p.terminate(grace).await;
        let tail = p.stderr().text();
        if !tail.is_empty() {
            message.push_str(&format!("; its stderr ended with:\n{tail}"));
        }
    }
    McpError::new(name, message)
}

fn http_transport(
    name: &str,
    url: &str,
    cfg: &McpServerConfig,
) -> Result<StreamableHttpClientTransport<reqwest::Client>, McpError> {
    let mut headers = HashMap::new();
    for (key, value) in &cfg.headers {
        let bad = |what: &str| McpError::new(name, format!("header `{key}` has an invalid {what}"));
        headers.insert(
            reqwest::header::HeaderName::try_from(key.as_str()).map_err(|_| bad("name"))?,
            reqwest::header::HeaderValue::try_from(value.as_str()).map_err(|_| bad("value"))?,
        );
    }
    // reqwest is built without a bundled crypto provider; use ring, as the
    // model clients do (installing twice is harmless).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .user_agent(concat!("agentd/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| McpError::new(name, format!("cannot build the HTTP client: {e}")))?;
    let config =
        StreamableHttpClientTransportConfig::with_uri(url.to_string()).custom_headers(headers);
    Ok(StreamableHttpClientTransport::with_client(client, config))
}
