//! The configuration a run resolves: the Trae config file (`--trae-config`
//! or the request's `config_file`, relative names from the start directory)
//! with the request's overrides, and the model client built from it.

use std::sync::Arc;

use agentd_engine::{
    config::{self, ConfigError, ConfigRequest, ResolvedConfig},
    llm,
};

use super::TaskManager;
use crate::error::Result;

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

    /// Resolves the configuration of a run (a named file must exist).
    pub(super) fn run_config(&self, req: &ConfigRequest) -> Result<ResolvedConfig> {
        Ok(config::resolve(&self.absolute_config_file(req), &|k| {
            self.config_env(k)
        })?)
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
            .map(|spec| ToolInfo {
                name: spec.name,
                description: spec.description,
                parameters: spec.parameters,
            })
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
