//! Trae Agent configuration, resolved per run.
//!
//! Precedence: request values > environment (`<PROVIDER>_API_KEY`,
//! `<PROVIDER>_BASE_URL`) > config file > built-in defaults. The file is the
//! request's `config_file`, else `TRAE_CONFIG_FILE`, else `trae_config.yaml`
//! (relative paths against the process's current dir). A `.json` file is the
//! legacy format; a missing `.yaml`/`.yml` falls back to a `.json` with the
//! same stem. The environment is passed in so tests can inject it.
//!
//! Besides Trae's own keys, a model entry (`models.<name>` in YAML,
//! `model_providers.<name>` in the legacy JSON) may set:
//!
//! - `timeout`: seconds one attempt of a model call may take (connect, send,
//!   the model's thinking, the answer), a positive number such as `90` or
//!   `2.5`. Without it the server-wide limit applies (600 s by default).
//! - `max_completion_tokens`: for OpenAI-compatible providers, send the
//!   token limit as `max_completion_tokens` (with this value) instead of
//!   `max_tokens`. Needed only for servers other than OpenAI's own API that
//!   want that field; OpenAI's API and reasoning models on OpenAI/Azure get
//!   it anyway.

mod file;
mod provider;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use provider::Provider;

use crate::agent::Budget;

use file::{LegacyFile, Parsed, YamlFile, YamlModel, YamlProvider};

/// Environment variable naming the config file.
pub const CONFIG_FILE_ENV: &str = "TRAE_CONFIG_FILE";
/// Config file used when neither the request nor the environment names one.
pub const DEFAULT_CONFIG_FILE: &str = "trae_config.yaml";
/// The only agent type Trae configs describe.
pub const TRAE_AGENT: &str = "trae_agent";
pub const DEFAULT_MAX_STEPS: u32 = 20;
/// Tools of `agents.trae_agent` when the file does not list them.
pub const DEFAULT_TOOLS: [&str; 4] = [
    "bash",
    "str_replace_based_edit_tool",
    "sequentialthinking",
    "task_done",
];

/// Values a run request may set; `None` means "not given".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigRequest {
    pub config_file: Option<String>,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub max_steps: Option<u32>,
}

/// An API key. Never printed (Debug/Display show `[redacted]`) and not
/// serializable, so it cannot leak through logs, errors or JSON.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The key itself: only for building the provider request.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// An MCP server entry (`mcp_servers.<name>`): stdio (`command`) or HTTP (`url`/`http_url`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct McpServerConfig {
    #[serde(default)]
    pub command: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub http_url: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Seconds.
    #[serde(default)]
    pub timeout: Option<f64>,
    #[serde(default)]
    pub trust: Option<bool>,
    #[serde(default)]
    pub description: Option<String>,
}

/// Which format the configuration came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfigFormat {
    /// No file: built-in defaults (plus environment and request).
    Defaults,
    Yaml,
    LegacyJson,
}

/// Everything one run needs to know about its model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResolvedConfig {
    /// The file looked at (after the `.yaml` → `.json` fallback), whether or not it exists.
    pub config_file: PathBuf,
    pub config_exists: bool,
    pub format: ConfigFormat,
    pub default_provider: String,
    pub max_steps: u32,
    /// Provider kind: openai|anthropic|azure|ollama|openrouter|doubao|google.
    pub provider: String,
    pub model: String,
    pub base_url: Option<String>,
    pub api_version: Option<String>,
    #[serde(skip)]
    pub api_key: Option<Secret>,
    pub max_tokens: u32,
    pub temperature: f64,
    pub top_p: f64,
    pub top_k: u32,
    pub max_retries: u32,
    pub parallel_tool_calls: bool,
    pub supports_tool_calling: bool,
    pub candidate_count: Option<u32>,
    pub stop_sequences: Vec<String>,
    /// Set explicitly: OpenAI-compatible requests carry this field rather
    /// than `max_tokens` (see the module docs).
    pub max_completion_tokens: Option<u32>,
    /// The model's `timeout`: seconds one attempt of a call may take; `None`
    /// leaves it to the client (`ClientOptions::request_timeout`).
    pub request_timeout_secs: Option<f64>,
    /// Stream the model's answers (`stream` of the model entry, default
    /// true); `false` for servers that cannot.
    pub stream: bool,
    pub enable_lakeview: bool,
    /// `lakeview.model` (a key into `models`), YAML only.
    pub lakeview_model: Option<String>,
    /// The model that summarises each step (see `agent::lakeview`), when
    /// `enable_lakeview` is on and there is one: in YAML the entry
    /// `lakeview.model` names (without it, no summaries: upstream refuses
    /// such a file, agentd runs without them); in the legacy JSON the
    /// agent's own model, as upstream's conversion of that format does.
    /// Its provider's key and base URL come from the environment as the
    /// agent's do; a run request's provider/model do not change it (YAML).
    #[serde(skip)]
    pub lakeview: Option<Box<ResolvedConfig>>,
    pub tools: Vec<String>,
    pub mcp_servers: BTreeMap<String, McpServerConfig>,
    pub allow_mcp_servers: Vec<String>,
    /// `max_tokens_total`, `max_cost_usd`, `max_wall_secs` of
    /// `agents.trae_agent` (top level in the legacy JSON); a run request's
    /// own limits win.
    pub budget: Budget,
}

/// Defaults shared by "no file" and missing keys in a file.
const DEFAULT_MAX_TOKENS: u32 = 4096;
/// The legacy JSON's own default (Trae's `legacy_config`).
const LEGACY_MAX_TOKENS: u32 = 1000;
const DEFAULT_TEMPERATURE: f64 = 0.5;
const DEFAULT_TOP_P: f64 = 1.0;
const DEFAULT_TOP_K: u32 = 0;
const DEFAULT_MAX_RETRIES: u32 = 10;

impl ResolvedConfig {
    /// Built-in defaults for one provider (no file, no environment). Handy
    /// for tests: set `base_url` and `api_key` and hand it to `llm::client_for`.
    pub fn defaults(provider: Provider) -> Self {
        ResolvedConfig {
            config_file: PathBuf::from(DEFAULT_CONFIG_FILE),
            config_exists: false,
            format: ConfigFormat::Defaults,
            default_provider: Provider::Anthropic.as_str().to_string(),
            max_steps: DEFAULT_MAX_STEPS,
            provider: provider.as_str().to_string(),
            model: provider.default_model().to_string(),
            base_url: provider.default_base_url().map(str::to_string),
            api_version: None,
            api_key: None,
            max_tokens: DEFAULT_MAX_TOKENS,
            temperature: DEFAULT_TEMPERATURE,
            top_p: DEFAULT_TOP_P,
            top_k: DEFAULT_TOP_K,
            max_retries: DEFAULT_MAX_RETRIES,
            parallel_tool_calls: false,
            supports_tool_calling: true,
            candidate_count: None,
            stop_sequences: vec![],
            max_completion_tokens: None,
            request_timeout_secs: None,
            stream: true,
            enable_lakeview: true,
            lakeview_model: None,
            lakeview: None,
            tools: DEFAULT_TOOLS.map(str::to_string).to_vec(),
            mcp_servers: BTreeMap::new(),
            allow_mcp_servers: vec![],
            budget: Budget::default(),
        }
    }

    /// The provider as a kind (always valid for a config built by [`resolve`]).
    pub fn provider_kind(&self) -> Result<Provider, ConfigError> {
        self.provider.parse()
    }

    /// The configuration of the lakeview model's client, if this run
    /// summarises its steps: its entry with temperature 0.1, as upstream's
    /// lakeview calls set it.
    pub fn lakeview_config(&self) -> Option<ResolvedConfig> {
        let lakeview = self.lakeview.as_deref().filter(|_| self.enable_lakeview)?;
        Some(ResolvedConfig {
            temperature: 0.1,
            ..lakeview.clone()
        })
    }

    pub fn api_key_set(&self) -> bool {
        self.api_key.is_some()
    }

    /// Fails when the provider needs a key and none was found. Call before a
    /// run; `resolve` itself does not, so `/api/config` can report the gap.
    pub fn require_api_key(&self) -> Result<(), ConfigError> {
        if self.api_key.is_none() && self.provider_kind()?.requires_api_key() {
            return Err(ConfigError::MissingApiKey {
                provider: self.provider.clone(),
            });
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("unknown provider '{name}' (expected one of {})", Provider::names())]
    UnknownProvider { name: String },
    #[error(
        "no API key for provider '{provider}': set {} or model_providers.<name>.api_key in the config file",
        Provider::parse(provider).map(Provider::api_key_env).unwrap_or_else(|| "<PROVIDER>_API_KEY".into())
    )]
    MissingApiKey { provider: String },
    #[error(
        "provider '{provider}' needs a base URL: set {} or model_providers.<name>.base_url in the config file",
        Provider::parse(provider).map(Provider::base_url_env).unwrap_or_else(|| "<PROVIDER>_BASE_URL".into())
    )]
    MissingBaseUrl { provider: String },
    #[error("unknown agent type '{0}' (only '{TRAE_AGENT}' is supported)")]
    UnknownAgentType(String),
    #[error("config file {} does not exist", path.display())]
    NotFound { path: PathBuf },
    #[error("config file {} could not be read: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {} is invalid: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

/// Reads the real process environment; pass `&process_env` to [`resolve`].
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Checks a requested agent type: empty means the default, `trae_agent`.
pub fn validate_agent_type(agent_type: &str) -> Result<(), ConfigError> {
    match agent_type.trim() {
        "" | TRAE_AGENT => Ok(()),
        other => Err(ConfigError::UnknownAgentType(other.to_string())),
    }
}

/// Resolves the configuration of one run. Does not fail on a missing API key
/// (see [`ResolvedConfig::require_api_key`]). A `config_file` named by the
/// request must exist; the environment's or the default one may be absent.
pub fn resolve(
    req: &ConfigRequest,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ResolvedConfig, ConfigError> {
    let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    let explicit = non_empty(req.config_file.as_deref());
    let named = explicit
        .clone()
        .or_else(|| env(CONFIG_FILE_ENV))
        .unwrap_or_else(|| DEFAULT_CONFIG_FILE.to_string());
    let path = locate(Path::new(&named));
    let exists = path.is_file();
    if !exists && explicit.is_some() {
        return Err(ConfigError::NotFound { path });
    }

    let mut cfg = if exists {
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Unreadable {
            path: path.clone(),
            source,
        })?;
        match file::parse(&path, &text)? {
            Parsed::Yaml(f) => from_yaml(&path, *f, req)?,
            Parsed::Legacy(f) => from_legacy(&path, *f, req)?,
        }
    } else {
        let kind = match non_empty(req.provider.as_deref()) {
            Some(p) => p.parse()?,
            None => Provider::Anthropic,
        };
        ResolvedConfig::defaults(kind)
    };
    cfg.config_file = path;
    cfg.config_exists = exists;

    // Environment beats the file; request values beat both.
    apply_env(&mut cfg, &env)?;
    if let Some(lakeview) = cfg.lakeview.as_mut() {
        apply_env(lakeview, &env)?;
    }
    if let Some(model) = non_empty(req.model.as_deref()) {
        cfg.model = model;
    }
    if let Some(steps) = req.max_steps {
        cfg.max_steps = steps;
    }
    if cfg.format == ConfigFormat::LegacyJson && cfg.enable_lakeview {
        // Upstream's legacy conversion gives lakeview the agent's model
        // itself, overrides included.
        cfg.lakeview = Some(Box::new(ResolvedConfig {
            lakeview: None,
            ..cfg.clone()
        }));
    }
    Ok(cfg)
}

/// A provider's key and base URL from the environment, over the file's.
fn apply_env(
    cfg: &mut ResolvedConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    let kind = cfg.provider_kind()?;
    if let Some(key) = env(&kind.api_key_env()) {
        cfg.api_key = Some(Secret::new(key));
    }
    if let Some(url) = env(&kind.base_url_env()) {
        cfg.base_url = Some(url);
    }
    if cfg.base_url.is_none() {
        cfg.base_url = kind.default_base_url().map(str::to_string);
    }
    Ok(())
}

/// A missing `.yaml`/`.yml` falls back to a `.json` with the same stem.
fn locate(path: &Path) -> PathBuf {
    let is_yaml = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"));
    if is_yaml && !path.is_file() {
        let json = path.with_extension("json");
        if json.is_file() {
            return json;
        }
    }
    path.to_path_buf()
}

fn non_empty(v: Option<&str>) -> Option<String> {
    v.map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn from_yaml(path: &Path, f: YamlFile, req: &ConfigRequest) -> Result<ResolvedConfig, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let agent = f
        .agents
        .trae_agent
        .ok_or_else(|| invalid("missing section agents.trae_agent".into()))?;
    let agent_model = f.models.get(&agent.model).ok_or_else(|| {
        invalid(format!(
            "agents.trae_agent.model refers to unknown model '{}'",
            agent.model
        ))
    })?;
    let provider_entry = |key: &str| {
        f.model_providers.get(key).cloned().ok_or_else(|| {
            invalid(format!(
                "models.{}.model_provider refers to unknown model provider '{key}'",
                agent.model
            ))
        })
    };
    let agent_provider = provider_entry(&agent_model.model_provider)?;
    let agent_kind: Provider = agent_provider.provider.parse()?;

    // A requested provider is a key of model_providers, else a provider kind
    // (the first entry of that kind, or a fresh one with no key).
    let (provider_key, provider) = match non_empty(req.provider.as_deref()) {
        None => (agent_model.model_provider.clone(), agent_provider),
        Some(wanted) => match f.model_providers.get(&wanted) {
            Some(p) => (wanted, p.clone()),
            None => {
                let kind: Provider = wanted.parse()?;
                match f
                    .model_providers
                    .iter()
                    .find(|(_, p)| Provider::parse(&p.provider) == Some(kind))
                {
                    Some((k, p)) => (k.clone(), p.clone()),
                    None => (
                        String::new(),
                        YamlProvider {
                            api_key: None,
                            provider: kind.as_str().into(),
                            base_url: None,
                            api_version: None,
                        },
                    ),
                }
            }
        },
    };
    let kind: Provider = provider.provider.parse()?;

    // The agent's model if it belongs to that provider, else the first model
    // that does, else the provider's default model with the agent's settings.
    let (model_key, model): (&str, YamlModel) = if provider_key == agent_model.model_provider {
        (&agent.model, agent_model.clone())
    } else if let Some((key, m)) = f
        .models
        .iter()
        .find(|(_, m)| m.model_provider == provider_key && !provider_key.is_empty())
    {
        (key, m.clone())
    } else {
        (
            &agent.model,
            YamlModel {
                model: kind.default_model().into(),
                ..agent_model.clone()
            },
        )
    };

    let mut cfg = model_config(kind, &provider, model, model_key).map_err(invalid)?;
    cfg.format = ConfigFormat::Yaml;
    cfg.default_provider = agent_kind.as_str().into();
    cfg.max_steps = agent.max_steps.unwrap_or(DEFAULT_MAX_STEPS);
    cfg.enable_lakeview = agent.enable_lakeview.unwrap_or(true);
    if let Some(tools) = agent.tools {
        cfg.tools = tools;
    }
    cfg.lakeview_model = f.lakeview.and_then(|l| l.model);
    if cfg.enable_lakeview
        && let Some(key) = &cfg.lakeview_model
    {
        let model = f
            .models
            .get(key)
            .ok_or_else(|| invalid(format!("lakeview.model refers to unknown model '{key}'")))?;
        let provider = f
            .model_providers
            .get(&model.model_provider)
            .ok_or_else(|| {
                invalid(format!(
                    "models.{key}.model_provider refers to unknown model provider '{}'",
                    model.model_provider
                ))
            })?;
        let kind: Provider = provider.provider.parse()?;
        let mut lakeview = model_config(kind, provider, model.clone(), key).map_err(invalid)?;
        lakeview.format = ConfigFormat::Yaml;
        cfg.lakeview = Some(Box::new(lakeview));
    }
    cfg.mcp_servers = f.mcp_servers;
    cfg.allow_mcp_servers = f.allow_mcp_servers;
    agent.budget.validate().map_err(invalid)?;
    cfg.budget = agent.budget;
    Ok(cfg)
}

/// A model entry of the YAML and its provider, over the built-in defaults.
fn model_config(
    kind: Provider,
    provider: &YamlProvider,
    model: YamlModel,
    model_key: &str,
) -> Result<ResolvedConfig, String> {
    let mut cfg = ResolvedConfig::defaults(kind);
    cfg.model = model.model;
    cfg.base_url = non_empty(provider.base_url.as_deref());
    cfg.api_version = non_empty(provider.api_version.as_deref());
    cfg.api_key = non_empty(provider.api_key.as_deref()).map(Secret::new);
    cfg.max_tokens = model
        .max_tokens
        .or(model.max_completion_tokens)
        .unwrap_or(DEFAULT_MAX_TOKENS);
    cfg.temperature = model.temperature.unwrap_or(DEFAULT_TEMPERATURE);
    cfg.top_p = model.top_p.unwrap_or(DEFAULT_TOP_P);
    cfg.top_k = model.top_k.unwrap_or(DEFAULT_TOP_K);
    cfg.max_retries = model.max_retries.unwrap_or(DEFAULT_MAX_RETRIES);
    cfg.parallel_tool_calls = model.parallel_tool_calls.unwrap_or(false);
    cfg.supports_tool_calling = model.supports_tool_calling.unwrap_or(true);
    cfg.candidate_count = model.candidate_count;
    cfg.stop_sequences = model.stop_sequences.unwrap_or_default();
    cfg.max_completion_tokens = model.max_completion_tokens;
    cfg.request_timeout_secs = model
        .timeout
        .map(|t| timeout_secs(t, &format!("models.{model_key}.timeout")))
        .transpose()?;
    cfg.stream = model.stream.unwrap_or(true);
    Ok(cfg)
}

fn from_legacy(
    path: &Path,
    f: LegacyFile,
    req: &ConfigRequest,
) -> Result<ResolvedConfig, ConfigError> {
    let default_provider = non_empty(f.default_provider.as_deref())
        .unwrap_or_else(|| Provider::Anthropic.as_str().into());
    let wanted = non_empty(req.provider.as_deref()).unwrap_or_else(|| default_provider.clone());
    let kind: Provider = wanted.parse()?;
    // Entries are keyed by provider kind; match the key case-insensitively.
    let (key, p) = f
        .model_providers
        .iter()
        .find(|(k, _)| Provider::parse(k) == Some(kind))
        .map(|(k, p)| (k.clone(), p.clone()))
        .unwrap_or_default();

    let mut cfg = ResolvedConfig::defaults(kind);
    cfg.format = ConfigFormat::LegacyJson;
    cfg.default_provider = default_provider;
    cfg.max_steps = f.max_steps.unwrap_or(DEFAULT_MAX_STEPS);
    cfg.enable_lakeview = f.enable_lakeview.unwrap_or(true);
    if let Some(model) = non_empty(p.model.as_deref()) {
        cfg.model = model;
    }
    cfg.base_url = non_empty(p.base_url.as_deref());
    cfg.api_version = non_empty(p.api_version.as_deref());
    cfg.api_key = non_empty(p.api_key.as_deref()).map(Secret::new);
    cfg.max_tokens = p.max_tokens.unwrap_or(LEGACY_MAX_TOKENS);
    cfg.temperature = p.temperature.unwrap_or(DEFAULT_TEMPERATURE);
    cfg.top_p = p.top_p.unwrap_or(DEFAULT_TOP_P);
    cfg.top_k = p.top_k.unwrap_or(DEFAULT_TOP_K);
    cfg.max_retries = p.max_retries.unwrap_or(DEFAULT_MAX_RETRIES);
    cfg.parallel_tool_calls = p.parallel_tool_calls.unwrap_or(false);
    cfg.supports_tool_calling = p.supports_tool_calling.unwrap_or(true);
    cfg.candidate_count = p.candidate_count;
    cfg.stop_sequences = p.stop_sequences.unwrap_or_default();
    cfg.max_completion_tokens = p.max_completion_tokens;
    cfg.stream = p.stream.unwrap_or(true);
    cfg.request_timeout_secs = p
        .timeout
        .map(|t| timeout_secs(t, &format!("model_providers.{key}.timeout")))
        .transpose()
        .map_err(|message| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        })?;
    cfg.mcp_servers = f.mcp_servers;
    cfg.allow_mcp_servers = f.allow_mcp_servers;
    f.budget
        .validate()
        .map_err(|message| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        })?;
    cfg.budget = f.budget;
    Ok(cfg)
}

/// A model's `timeout`: positive seconds that fit a `Duration` (so not
/// NaN, infinite or absurdly large).
fn timeout_secs(secs: f64, field: &str) -> Result<f64, String> {
    if secs > 0.0 && std::time::Duration::try_from_secs_f64(secs).is_ok() {
        Ok(secs)
    } else {
        Err(format!(
            "{field} must be a positive number of seconds, not {secs}"
        ))
    }
}

#[cfg(test)]
mod tests;
