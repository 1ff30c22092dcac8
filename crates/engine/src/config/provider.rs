//! The provider kinds agentd can talk to, and what each needs by default.

use serde::{Deserialize, Serialize};

/// A provider kind (the `provider` field of a Trae `model_providers` entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    OpenAi,
    Anthropic,
    Azure,
    Ollama,
    OpenRouter,
    Doubao,
    Google,
}

impl Provider {
    pub const ALL: [Provider; 7] = [
        Provider::OpenAi,
        Provider::Anthropic,
        Provider::Azure,
        Provider::Ollama,
        Provider::OpenRouter,
        Provider::Doubao,
        Provider::Google,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Provider::OpenAi => "openai",
            Provider::Anthropic => "anthropic",
            Provider::Azure => "azure",
            Provider::Ollama => "ollama",
            Provider::OpenRouter => "openrouter",
            Provider::Doubao => "doubao",
            Provider::Google => "google",
        }
    }

    /// Case-insensitive; surrounding whitespace ignored.
    pub fn parse(name: &str) -> Option<Provider> {
        let name = name.trim();
        Self::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(name))
    }

    /// Azure has no default: its URL names the customer's resource.
    pub fn default_base_url(self) -> Option<&'static str> {
        match self {
            Provider::OpenAi => Some("https://api.openai.com/v1"),
            Provider::Anthropic => Some("https://api.anthropic.com"),
            Provider::Azure => None,
            Provider::Ollama => Some("http://localhost:11434/v1"),
            Provider::OpenRouter => Some("https://openrouter.ai/api/v1"),
            Provider::Doubao => Some("https://ark.cn-beijing.volces.com/api/v3"),
            Provider::Google => Some("https://generativelanguage.googleapis.com"),
        }
    }

    /// The model used when neither the request nor the file names one.
    pub fn default_model(self) -> &'static str {
        match self {
            Provider::OpenAi | Provider::Azure => "gpt-4o",
            Provider::Anthropic => "claude-sonnet-4-20250514",
            Provider::Ollama => "qwen3",
            Provider::OpenRouter => "openai/gpt-4o",
            Provider::Doubao => "doubao-seed-1-6-250615",
            Provider::Google => "gemini-2.5-flash",
        }
    }

    /// A local Ollama server takes no key.
    pub fn requires_api_key(self) -> bool {
        self != Provider::Ollama
    }

    /// Environment variable holding this provider's key, e.g. `OPENAI_API_KEY`.
    pub fn api_key_env(self) -> String {
        format!("{}_API_KEY", self.as_str().to_ascii_uppercase())
    }

    /// Environment variable overriding this provider's base URL, e.g. `OPENROUTER_BASE_URL`.
    pub fn base_url_env(self) -> String {
        format!("{}_BASE_URL", self.as_str().to_ascii_uppercase())
    }

    pub(crate) fn names() -> String {
        Self::ALL.map(Provider::as_str).join(", ")
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Provider {
    type Err = super::ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Provider::parse(s).ok_or_else(|| super::ConfigError::UnknownProvider {
            name: s.to_string(),
        })
    }
}
