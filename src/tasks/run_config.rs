//! The configuration a run resolves: the Trae config file (`--trae-config`
//! or the request's `config_file`, relative names from the start directory)
//! with the request's overrides, and the model client built from it.

use std::sync::Arc;

use agentd_engine::{
    agent::Budget,
    config::{self, ConfigError, ConfigRequest, ResolvedConfig},
    llm,
    tools::mcp,
};

use super::TaskManager;
use crate::error::{Error, Result};

/// What `/api/config` asks about: a config file and overrides.
#[derive(Debug, Clone, Default)]
pub struct ConfigQuery {
    pub config_file: Option<String>,
    pub provider: Option<String>,
    pub model: Option<String>,
}

/// The configuration a run would use, as `/api/config` reports it: never
/// the API key itself, only whether one is set.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigReport {
    /// As the request named it (relative names stay relative).
    pub config_file: String,
    pub config_exists: bool,
    pub default_provider: String,
    pub max_steps: u32,
    pub provider: String,
    pub model: String,
    pub base_url: Option<String>,
    pub api_version: Option<String>,
    pub api_key_set: bool,
    pub max_tokens: u32,
    pub temperature: f64,
    pub top_p: f64,
}

impl From<agentd_engine::messages::ToolSpec> for ToolInfo {
    fn from(spec: agentd_engine::messages::ToolSpec) -> Self {
        ToolInfo {
            name: spec.name,
            description: spec.description,
            parameters: spec.parameters,
        }
    }
}

/// A tool a run can be given (`/api/tools`).
#[derive(Debug, Clone, PartialEq)]
pub struct ToolInfo {
    pub name: String,
    pub description: String,
    /// Its parameters' JSON schema.
    pub parameters: serde_json::Value,
}

/// The environment variable naming the default Trae config file.
const CONFIG_FILE_ENV: &str = "TRAE_CONFIG_FILE";

impl TaskManager {
    /// The environment configuration is resolved against: the process's,
    /// with `--trae-config` (always set, absolute) standing in for TRAE_CONFIG_FILE.
    fn config_env(&self, key: &str) -> Option<String> {
        if key == CONFIG_FILE_ENV {
            return Some(self.settings.trae_config_file.display().to_string());
        }
        config::process_env(key)
    }

    /// The request with its `config_file` absolute: a relative name is
    /// looked for in the directory agentd was started in (never wherever the
    /// process's working directory happens to be later).
    fn absolute_config_file(&self, req: &ConfigRequest) -> ConfigRequest {
        let config_file = req.config_file.as_ref().map(|f| {
            let path = std::path::Path::new(f);
            match path.is_absolute() {
                true => f.clone(),
                false => self.settings.config_dir.join(path).display().to_string(),
            }
        });
        ConfigRequest {
            config_file,
            ..req.clone()
        }
    }

    /// The model client of a run, with the server's default request timeout.
    pub(super) fn llm_client(&self, cfg: &ResolvedConfig) -> Result<Arc<dyn llm::LlmClient>> {
        let options = llm::ClientOptions {
            request_timeout: self.settings.runner.llm_request_timeout,
            ..llm::ClientOptions::default()
        };
        Ok(llm::client_with_options(cfg, &options)?)
    }

    /// The lakeview model's client, when the run summarises its steps. A
    /// lakeview model that cannot be reached as configured (no API key, no
    /// base URL) only costs the summaries: lakeview never fails a run.
    pub(super) fn lakeview_client(
        &self,
        task_id: &str,
        cfg: &ResolvedConfig,
        sink: &super::forward::LogSink,
    ) -> Option<Arc<dyn llm::LlmClient>> {
        let lakeview = cfg.lakeview_config()?;
        match self.llm_client(&lakeview) {
            Ok(client) => {
                let metrics = &self.runner.metrics;
                sink.observe_lakeview(metrics.llm(&lakeview.provider, &lakeview.model));
                Some(client)
            }
            Err(e) => {
                tracing::warn!(%task_id, error = %e, "lakeview is off for this run");
                None
            }
        }
    }

    /// Resolves the configuration of a run (a named file must exist), with
    /// the server's default budget under the file's limits and `requested`
    /// (the run request's) over them.
    pub(super) fn run_config(
        &self,
        req: &ConfigRequest,
        requested: Budget,
    ) -> Result<ResolvedConfig> {
        requested
            .validate()
            .map_err(|e| Error::invalid(format!("budget: {e}")))?;
        let mut cfg = config::resolve(&self.absolute_config_file(req), &|k| self.config_env(k))?;
        cfg.budget = requested
            .or(cfg.budget)
            .or(self.settings.runner.default_budget);
        Ok(cfg)
    }

    /// The budget every task gets unless its request or config sets limits.
    pub fn default_budget(&self) -> Budget {
        self.settings.runner.default_budget
    }

    /// The tools of the MCP servers a run with this configuration starts
    /// (`/api/tools?include_mcp=true`), with the server of each: the servers
    /// are started in agentd's start directory for the listing and ended.
    pub async fn mcp_tools(&self, config_file: Option<String>) -> Result<Vec<(String, ToolInfo)>> {
        // As `/api/config`: a named file that does not exist is reported on
        // (no servers), not refused.
        let cfg = self.resolve_config(&ConfigRequest {
            config_file,
            ..ConfigRequest::default()
        })?;
        let servers = mcp::allowed_servers(&cfg.mcp_servers, &cfg.allow_mcp_servers);
        mcp::list_tools(
            &servers,
            &self.settings.config_dir,
            &mcp::McpOptions::default(),
        )
        .await
        .map(|listed| {
            listed
                .into_iter()
                .map(|(server, spec)| (server, ToolInfo::from(spec)))
                .collect()
        })
        .map_err(|e| Error::invalid(e.to_string()))
    }

    /// The Trae configuration a run would use, for `/api/config`. A named
    /// file that does not exist is reported (`config_exists: false`, with
    /// defaults) rather than refused: this is a report, not a run. A file
    /// the request named relatively is reported by that name, as asked.
    pub fn config_report(&self, query: ConfigQuery) -> Result<ConfigReport> {
        let cfg = self.resolve_config(&ConfigRequest {
            config_file: query.config_file,
            provider: query.provider,
            model: query.model,
            max_steps: None,
        })?;
        Ok(ConfigReport {
            config_file: cfg.config_file.display().to_string(),
            config_exists: cfg.config_exists,
            default_provider: cfg.default_provider,
            max_steps: cfg.max_steps,
            provider: cfg.provider,
            model: cfg.model,
            base_url: cfg.base_url,
            api_version: cfg.api_version,
            api_key_set: cfg.api_key.is_some(),
            max_tokens: cfg.max_tokens,
            temperature: cfg.temperature,
            top_p: cfg.top_p,
        })
    }

    /// The built-in tools, as a run's configuration can name them.
    pub fn tools(&self) -> Vec<ToolInfo> {
        agentd_engine::tools::builtin_tool_specs()
            .into_iter()
            .map(ToolInfo::from)
            .collect()
    }

    fn resolve_config(&self, req: &ConfigRequest) -> Result<ResolvedConfig> {
        let absolute = self.absolute_config_file(req);
        let resolved = match config::resolve(&absolute, &|k| self.config_env(k)) {
            Err(ConfigError::NotFound { path }) => {
                // Resolve as if the missing file were the default one.
                let as_default = |key: &str| {
                    if key == CONFIG_FILE_ENV {
                        Some(path.display().to_string())
                    } else {
                        config::process_env(key)
                    }
                };
                let req = ConfigRequest {
                    config_file: None,
                    ..req.clone()
                };
                config::resolve(&req, &as_default)
            }
            other => other,
        };
        let mut cfg = resolved?;
        let named_relatively = req
            .config_file
            .as_ref()
            .is_some_and(|f| std::path::Path::new(f).is_relative());
        if named_relatively && let Ok(rel) = cfg.config_file.strip_prefix(&self.settings.config_dir)
        {
            cfg.config_file = rel.to_path_buf();
        }
        Ok(cfg)
    }
}
