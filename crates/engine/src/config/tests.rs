use std::collections::HashMap;

use super::*;

const YAML: &str = r#"
agents:
  trae_agent:
    enable_lakeview: false
    model: trae_agent_model
    max_steps: 200
    tools:
      - bash
      - str_replace_based_edit_tool
      - task_done
model_providers:
  anthropic:
    api_key: sk-ant-file-key
    provider: anthropic
  my_openai:
    api_key: sk-openai-file-key
    provider: openai
    base_url: https://example.test/v1
models:
  trae_agent_model:
    model_provider: anthropic
    model: claude-sonnet-4-20250514
    max_tokens: 4096
    temperature: 0.5
    top_p: 1
    top_k: 0
    max_retries: 10
    parallel_tool_calls: true
  gpt:
    model_provider: my_openai
    model: gpt-4.1
    max_tokens: 8000
    temperature: 0.2
    top_p: 1
    top_k: 0
    max_retries: 3
    parallel_tool_calls: false
lakeview:
  model: trae_agent_model
mcp_servers:
  playwright:
    command: npx
    args: ["@playwright/mcp@0.0.27"]
allow_mcp_servers: [playwright]
"#;

const LEGACY: &str = r#"{
  "default_provider": "openai",
  "max_steps": 30,
  "enable_lakeview": false,
  "model_providers": {
    "openai": {"api_key": "sk-legacy-key", "model": "gpt-4o", "max_tokens": 128000, "temperature": 0.3, "top_p": 1, "max_retries": 5},
    "anthropic": {"api_key": "sk-ant-legacy", "model": "claude-3-5-sonnet"}
  }
}"#;

fn no_env(_: &str) -> Option<String> {
    None
}

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| map.get(k).cloned()
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write config");
    path.to_string_lossy().into_owned()
}

fn req(file: &str) -> ConfigRequest {
    ConfigRequest {
        config_file: Some(file.into()),
        ..Default::default()
    }
}

#[test]
fn yaml_is_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(&dir, "trae_config.yaml", YAML);
    let cfg = resolve(&req(&path), &no_env).expect("resolve");
    assert!(cfg.config_exists);
    assert_eq!(cfg.format, ConfigFormat::Yaml);
    assert_eq!(cfg.provider, "anthropic");
    assert_eq!(cfg.default_provider, "anthropic");
    assert_eq!(cfg.model, "claude-sonnet-4-20250514");
    assert_eq!(cfg.max_steps, 200);
    assert_eq!(cfg.base_url.as_deref(), Some("https://api.anthropic.com"));
    assert_eq!(
        cfg.api_key.as_ref().map(Secret::expose),
        Some("sk-ant-file-key")
    );
    assert_eq!(cfg.max_tokens, 4096);
    assert!(cfg.parallel_tool_calls);
    assert!(!cfg.enable_lakeview);
    assert_eq!(
        cfg.tools,
        ["bash", "str_replace_based_edit_tool", "task_done"]
    );
    assert_eq!(cfg.lakeview_model.as_deref(), Some("trae_agent_model"));
    assert_eq!(
        cfg.mcp_servers["playwright"].command.as_deref(),
        Some("npx")
    );
    assert_eq!(cfg.allow_mcp_servers, ["playwright"]);
}

#[test]
fn yaml_provider_switch_picks_that_providers_model() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(&dir, "c.yaml", YAML);
    // By provider kind: the first entry of that kind and its model.
    let r = ConfigRequest {
        provider: Some("openai".into()),
        ..req(&path)
    };
    let cfg = resolve(&r, &no_env).expect("resolve");
    assert_eq!(cfg.provider, "openai");
    assert_eq!(cfg.model, "gpt-4.1");
    assert_eq!(cfg.max_retries, 3);
    assert_eq!(cfg.base_url.as_deref(), Some("https://example.test/v1"));
    assert_eq!(
        cfg.api_key.as_ref().map(Secret::expose),
        Some("sk-openai-file-key")
    );
    // By entry name, same result.
    let r = ConfigRequest {
        provider: Some("my_openai".into()),
        ..req(&path)
    };
    assert_eq!(resolve(&r, &no_env).expect("resolve").model, "gpt-4.1");
    // A kind with no entry: defaults for it, no key, default URL.
    let r = ConfigRequest {
        provider: Some("openrouter".into()),
        ..req(&path)
    };
    let cfg = resolve(&r, &no_env).expect("resolve");
    assert_eq!(cfg.model, "openai/gpt-4o");
    assert!(cfg.api_key.is_none());
    assert_eq!(
        cfg.base_url.as_deref(),
        Some("https://openrouter.ai/api/v1")
    );
    assert!(matches!(
        cfg.require_api_key(),
        Err(ConfigError::MissingApiKey { .. })
    ));
}

#[test]
fn legacy_json_is_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(&dir, "trae_config.json", LEGACY);
    let cfg = resolve(&req(&path), &no_env).expect("resolve");
    assert_eq!(cfg.format, ConfigFormat::LegacyJson);
    assert_eq!(cfg.default_provider, "openai");
    assert_eq!(cfg.provider, "openai");
    assert_eq!(cfg.model, "gpt-4o");
    assert_eq!(cfg.max_steps, 30);
    assert_eq!(cfg.max_tokens, 128000);
    assert_eq!(cfg.temperature, 0.3);
    assert_eq!(cfg.max_retries, 5);
    assert_eq!(cfg.base_url.as_deref(), Some("https://api.openai.com/v1"));
    // Legacy defaults for a provider given only a model.
    let r = ConfigRequest {
        provider: Some("anthropic".into()),
        ..req(&path)
    };
    let cfg = resolve(&r, &no_env).expect("resolve");
    assert_eq!(cfg.model, "claude-3-5-sonnet");
    assert_eq!(
        (
            cfg.max_tokens,
            cfg.temperature,
            cfg.top_p,
            cfg.top_k,
            cfg.max_retries
        ),
        (1000, 0.5, 1.0, 0, 10)
    );
    assert!(!cfg.parallel_tool_calls);
}

#[test]
fn missing_yaml_falls_back_to_json_with_same_stem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = write(&dir, "trae_config.json", LEGACY);
    let yaml = dir.path().join("trae_config.yaml");
    let cfg = resolve(&req(&yaml.to_string_lossy()), &no_env).expect("resolve");
    assert_eq!(cfg.config_file, PathBuf::from(json));
    assert_eq!(cfg.format, ConfigFormat::LegacyJson);
    assert_eq!(cfg.model, "gpt-4o");
}

#[test]
fn env_names_the_file_and_missing_default_uses_defaults() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(&dir, "x.yaml", YAML);
    let cfg = resolve(
        &ConfigRequest::default(),
        &env_of(&[("TRAE_CONFIG_FILE", &path)]),
    )
    .expect("resolve");
    assert_eq!(cfg.max_steps, 200);

    // A file named only by the environment may be missing: defaults apply.
    let missing = dir.path().join("nope.yaml");
    let cfg = resolve(
        &ConfigRequest::default(),
        &env_of(&[("TRAE_CONFIG_FILE", &missing.to_string_lossy())]),
    )
    .expect("resolve");
    assert!(!cfg.config_exists);
    assert_eq!(cfg.format, ConfigFormat::Defaults);
    assert_eq!(
        (
            cfg.provider.as_str(),
            cfg.default_provider.as_str(),
            cfg.max_steps
        ),
        ("anthropic", "anthropic", 20)
    );
    assert_eq!(cfg.model, "claude-sonnet-4-20250514");
    assert_eq!(cfg.tools, DEFAULT_TOOLS);

    // One named by the request must exist.
    let err = resolve(&req(&missing.to_string_lossy()), &no_env).expect_err("missing");
    assert!(matches!(err, ConfigError::NotFound { .. }), "{err}");
}

#[test]
fn request_beats_env_beats_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(&dir, "c.yaml", YAML);
    let env = env_of(&[
        ("ANTHROPIC_API_KEY", "sk-env-key"),
        ("ANTHROPIC_BASE_URL", "http://127.0.0.1:9/"),
    ]);
    let cfg = resolve(&req(&path), &env).expect("resolve");
    assert_eq!(cfg.api_key.as_ref().map(Secret::expose), Some("sk-env-key"));
    assert_eq!(cfg.base_url.as_deref(), Some("http://127.0.0.1:9/"));

    let r = ConfigRequest {
        model: Some("claude-opus-4-1".into()),
        max_steps: Some(7),
        ..req(&path)
    };
    let cfg = resolve(&r, &env).expect("resolve");
    assert_eq!(cfg.model, "claude-opus-4-1");
    assert_eq!(cfg.max_steps, 7);
    // Only the model name changed; the rest of the model's settings stay.
    assert_eq!(cfg.max_tokens, 4096);
    assert!(cfg.parallel_tool_calls);

    // Empty environment values count as unset.
    let cfg = resolve(&req(&path), &env_of(&[("ANTHROPIC_API_KEY", "")])).expect("resolve");
    assert_eq!(
        cfg.api_key.as_ref().map(Secret::expose),
        Some("sk-ant-file-key")
    );
}

#[test]
fn no_file_uses_env_and_provider_defaults() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("none.yaml").to_string_lossy().into_owned();
    let env = env_of(&[("TRAE_CONFIG_FILE", &missing), ("OPENAI_API_KEY", "sk-x")]);
    let r = ConfigRequest {
        provider: Some("OpenAI".into()),
        ..Default::default()
    };
    let cfg = resolve(&r, &env).expect("resolve");
    assert_eq!(cfg.provider, "openai");
    assert_eq!(cfg.model, "gpt-4o");
    assert_eq!(cfg.base_url.as_deref(), Some("https://api.openai.com/v1"));
    assert!(cfg.require_api_key().is_ok());

    let r = ConfigRequest {
        provider: Some("ollama".into()),
        ..Default::default()
    };
    let cfg = resolve(&r, &env_of(&[("TRAE_CONFIG_FILE", &missing)])).expect("resolve");
    assert_eq!(cfg.base_url.as_deref(), Some("http://localhost:11434/v1"));
    assert!(cfg.require_api_key().is_ok(), "ollama needs no key");

    let r = ConfigRequest {
        provider: Some("azure".into()),
        ..Default::default()
    };
    let cfg = resolve(&r, &env_of(&[("TRAE_CONFIG_FILE", &missing)])).expect("resolve");
    assert_eq!(cfg.base_url, None);
    let err = cfg.require_api_key().expect_err("no key");
    assert!(err.to_string().contains("AZURE_API_KEY"), "{err}");
}

#[test]
fn unknown_provider_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(&dir, "c.yaml", YAML);
    let r = ConfigRequest {
        provider: Some("nosuch".into()),
        ..req(&path)
    };
    let err = resolve(&r, &no_env).expect_err("unknown");
    assert!(matches!(err, ConfigError::UnknownProvider { .. }));
    assert!(
        err.to_string().contains("'nosuch'") && err.to_string().contains("openrouter"),
        "{err}"
    );

    let bad_kind = YAML.replace("    provider: anthropic", "    provider: acme");
    let path = write(&dir, "d.yaml", &bad_kind);
    assert!(matches!(
        resolve(&req(&path), &no_env),
        Err(ConfigError::UnknownProvider { .. })
    ));
}

#[test]
fn bad_files_are_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        &dir,
        "a.yaml",
        "agents: [unclosed\n  api_key: sk-secret-in-broken-file",
    );
    let err = resolve(&req(&path), &no_env).expect_err("broken yaml");
    assert!(matches!(err, ConfigError::Invalid { .. }), "{err}");
    assert!(!err.to_string().contains("sk-secret-in-broken-file"));

    let path = write(&dir, "b.json", "{\"max_steps\": \"many\"");
    let err = resolve(&req(&path), &no_env).expect_err("broken json");
    assert!(matches!(err, ConfigError::Invalid { .. }), "{err}");
    assert!(err.to_string().contains("b.json"), "{err}");

    let dangling = YAML.replace(
        "model: trae_agent_model\n    max_steps",
        "model: nope\n    max_steps",
    );
    let path = write(&dir, "c.yaml", &dangling);
    let err = resolve(&req(&path), &no_env).expect_err("dangling model");
    assert!(err.to_string().contains("unknown model 'nope'"), "{err}");

    let path = write(&dir, "d.yaml", "models: {}\n");
    let err = resolve(&req(&path), &no_env).expect_err("no agent");
    assert!(err.to_string().contains("agents.trae_agent"), "{err}");

    // A string where a number belongs quotes the value: a key must not survive.
    let path = write(
        &dir,
        "e.json",
        r#"{"model_providers": {"openai": {"api_key": "sk-quoted-key", "max_tokens": "sk-quoted-key"}}}"#,
    );
    let err = resolve(&req(&path), &no_env).expect_err("wrong type");
    assert!(!err.to_string().contains("sk-quoted-key"), "{err}");
}

#[test]
fn agent_type_must_be_trae_agent() {
    assert!(validate_agent_type("trae_agent").is_ok());
    assert!(validate_agent_type("").is_ok());
    let err = validate_agent_type("swe_agent").expect_err("unknown");
    assert!(err.to_string().contains("swe_agent"));
}

#[test]
fn api_key_never_printed_or_serialized() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(&dir, "c.yaml", YAML);
    let cfg = resolve(
        &req(&path),
        &env_of(&[("ANTHROPIC_API_KEY", "sk-very-secret")]),
    )
    .expect("resolve");
    assert!(cfg.api_key_set());
    let debug = format!("{cfg:?}");
    assert!(!debug.contains("sk-very-secret") && debug.contains("[redacted]"));
    let json = serde_json::to_string(&cfg).expect("serialize");
    assert!(!json.contains("sk-very-secret") && !json.contains("api_key"));
    let secret = Secret::new("sk-very-secret");
    assert_eq!(format!("{secret} {secret:?}"), "[redacted] [redacted]");
    let err = ConfigError::MissingApiKey {
        provider: "openai".into(),
    };
    assert!(err.to_string().contains("OPENAI_API_KEY"));
}

#[test]
fn a_models_timeout_is_read_from_both_formats() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(&dir, "none.yaml", YAML);
    let cfg = resolve(&req(&path), &no_env).expect("resolve");
    assert_eq!(cfg.request_timeout_secs, None);
    let json = serde_json::to_value(&cfg).expect("serialize");
    assert_eq!(json["request_timeout_secs"], serde_json::Value::Null);

    let yaml = YAML
        .replace(
            "    parallel_tool_calls: true\n",
            "    parallel_tool_calls: true\n    timeout: 90.5\n",
        )
        .replace(
            "    max_retries: 3\n",
            "    max_retries: 3\n    timeout: 30\n",
        );
    let path = write(&dir, "t.yaml", &yaml);
    let cfg = resolve(&req(&path), &no_env).expect("resolve");
    assert_eq!(cfg.request_timeout_secs, Some(90.5));
    let json = serde_json::to_value(&cfg).expect("serialize");
    assert_eq!(json["request_timeout_secs"], 90.5);
    // The model picked for another provider brings its own timeout.
    let switched = ConfigRequest {
        provider: Some("my_openai".into()),
        ..req(&path)
    };
    let cfg = resolve(&switched, &no_env).expect("resolve");
    assert_eq!(
        (cfg.model.as_str(), cfg.request_timeout_secs),
        ("gpt-4.1", Some(30.0))
    );

    let legacy = LEGACY.replace(
        r#""max_retries": 5}"#,
        r#""max_retries": 5, "timeout": 45}"#,
    );
    let path = write(&dir, "t.json", &legacy);
    let cfg = resolve(&req(&path), &no_env).expect("resolve");
    assert_eq!(cfg.request_timeout_secs, Some(45.0));
}

#[test]
fn a_timeout_must_be_positive_seconds() {
    let dir = tempfile::tempdir().expect("tempdir");
    for bad in ["0", "-1", ".nan", ".inf", "1e300"] {
        let yaml = YAML.replace(
            "    parallel_tool_calls: true\n",
            &format!("    parallel_tool_calls: true\n    timeout: {bad}\n"),
        );
        let path = write(&dir, "bad.yaml", &yaml);
        let err = resolve(&req(&path), &no_env).expect_err(bad);
        assert!(matches!(err, ConfigError::Invalid { .. }), "{bad}: {err}");
        assert!(
            err.to_string()
                .contains("models.trae_agent_model.timeout must be a positive number of seconds"),
            "{bad}: {err}"
        );
    }
    let legacy = LEGACY.replace(r#""max_retries": 5}"#, r#""max_retries": 5, "timeout": 0}"#);
    let path = write(&dir, "bad.json", &legacy);
    let err = resolve(&req(&path), &no_env).expect_err("zero");
    assert!(
        err.to_string()
            .contains("model_providers.openai.timeout must be a positive number of seconds, not 0"),
        "{err}"
    );
}

#[test]
fn budgets_are_read_from_both_formats_and_must_be_positive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = YAML.replace(
        "    max_steps: 200\n",
        "    max_steps: 200\n    max_tokens_total: 50000\n    max_cost_usd: 1.5\n",
    );
    let cfg = resolve(&req(&write(&dir, "b.yaml", &yaml)), &no_env).expect("resolve");
    assert_eq!(
        cfg.budget,
        Budget {
            max_tokens_total: Some(50_000),
            max_cost_usd: Some(1.5),
            max_wall_secs: None
        }
    );
    let legacy = LEGACY.replace(
        "\"max_steps\": 30,",
        "\"max_steps\": 30, \"max_wall_secs\": 600,",
    );
    let cfg = resolve(&req(&write(&dir, "b.json", &legacy)), &no_env).expect("resolve");
    assert_eq!(cfg.budget.max_wall_secs, Some(600.0));
    let bad = YAML.replace(
        "    max_steps: 200\n",
        "    max_steps: 200\n    max_cost_usd: -1\n",
    );
    let err = resolve(&req(&write(&dir, "bad.yaml", &bad)), &no_env).unwrap_err();
    assert!(
        err.to_string()
            .contains("max_cost_usd must be a positive number"),
        "{err}"
    );
}

#[test]
fn yaml_lakeview_model_is_resolved_with_its_own_provider() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = YAML
        .replace("enable_lakeview: false", "enable_lakeview: true")
        .replace(
            "lakeview:\n  model: trae_agent_model",
            "lakeview:\n  model: gpt",
        );
    let path = write(&dir, "c.yaml", &text);
    let env = env_of(&[("OPENAI_BASE_URL", "https://env.example/v1")]);
    // The request's model is the agent's, not lakeview's.
    let r = ConfigRequest {
        model: Some("claude-other".into()),
        ..req(&path)
    };
    let cfg = resolve(&r, &env).expect("resolve");
    assert_eq!(cfg.model, "claude-other");
    let lv = cfg.lakeview_config().expect("lakeview is on");
    assert_eq!(
        (lv.provider.as_str(), lv.model.as_str()),
        ("openai", "gpt-4.1")
    );
    assert_eq!(lv.base_url.as_deref(), Some("https://env.example/v1"));
    assert_eq!(
        lv.api_key.as_ref().map(Secret::expose),
        Some("sk-openai-file-key")
    );
    assert_eq!((lv.max_retries, lv.temperature), (3, 0.1));

    // Off by the agent's switch, or without a lakeview model.
    let off = resolve(&req(&write(&dir, "off.yaml", YAML)), &no_env).expect("resolve");
    assert!(off.lakeview_config().is_none());
    let none = text.replace("lakeview:\n  model: gpt\n", "");
    let none = resolve(&req(&write(&dir, "none.yaml", &none)), &no_env).expect("resolve");
    assert!(none.enable_lakeview && none.lakeview_config().is_none());
}

#[test]
fn yaml_lakeview_naming_an_unknown_model_is_invalid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = YAML
        .replace("enable_lakeview: false", "enable_lakeview: true")
        .replace(
            "lakeview:\n  model: trae_agent_model",
            "lakeview:\n  model: nope",
        );
    let err = resolve(&req(&write(&dir, "c.yaml", &text)), &no_env).unwrap_err();
    assert!(
        err.to_string()
            .contains("lakeview.model refers to unknown model 'nope'"),
        "{err}"
    );
}

#[test]
fn legacy_lakeview_uses_the_agents_model() {
    let dir = tempfile::tempdir().expect("tempdir");
    let on = LEGACY.replace("\"enable_lakeview\": false,", "");
    let r = ConfigRequest {
        model: Some("gpt-4.1-mini".into()),
        ..req(&write(&dir, "c.json", &on))
    };
    let cfg = resolve(&r, &no_env).expect("resolve");
    let lv = cfg.lakeview_config().expect("on by default");
    assert_eq!(
        (lv.provider.as_str(), lv.model.as_str()),
        ("openai", "gpt-4.1-mini")
    );
    assert_eq!(
        lv.api_key.as_ref().map(Secret::expose),
        Some("sk-legacy-key")
    );
    let off = resolve(&req(&write(&dir, "off.json", LEGACY)), &no_env).expect("resolve");
    assert!(off.lakeview_config().is_none());
}
