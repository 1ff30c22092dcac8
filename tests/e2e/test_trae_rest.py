"""The Trae Agent API (shared/spec/trae-agent-flask-api.md) over REST through
Envoy, on both listeners: every example that needs no running agent."""

from __future__ import annotations

import requests

from helpers import SECRETS, assert_trae_error

EXPECTED_TOOLS = {"bash", "str_replace_based_edit_tool", "sequentialthinking", "task_done", "json_edit_tool", "ckg"}


def get_config(base: str, query: str = "") -> dict:
    """GET /api/config; checks that no API key appears anywhere in the answer."""
    r = requests.get(f"{base}/api/config{query}", timeout=30)
    for secret in SECRETS:
        assert secret not in r.text, f"API key leaked in the body of /api/config{query}"
        for k, v in r.headers.items():
            assert secret not in v, f"API key leaked in header {k}"
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"status", "config"}, body
    assert body["status"] == "success"
    cfg = body["config"]
    # The document's keys, plus the sandbox report issue 5 asks for.
    assert set(cfg) == {"config_file", "config_exists", "general_settings", "provider_settings", "sandbox"}, cfg
    assert set(cfg["sandbox"]) == {
        "available", "enabled", "network", "detail", "cgroups", "kill", "task_limits", "unenforced_limits",
    }, cfg["sandbox"]
    assert cfg["sandbox"]["enabled"] is False, "the sandbox is off unless --sandbox is given"
    assert isinstance(cfg["config_file"], str)
    assert type(cfg["config_exists"]) is bool
    gs, ps = cfg["general_settings"], cfg["provider_settings"]
    assert set(gs) == {"default_provider", "max_steps"}, gs
    assert isinstance(gs["default_provider"], str) and type(gs["max_steps"]) is int
    assert set(ps) == {
        "provider", "model", "base_url", "api_version", "api_key_set", "max_tokens", "temperature", "top_p",
    }, ps
    for k in ("provider", "model", "base_url", "api_version"):
        assert isinstance(ps[k], str), (k, ps)
    assert type(ps["api_key_set"]) is bool
    assert type(ps["max_tokens"]) is int
    for k in ("temperature", "top_p"):
        assert type(ps[k]) in (int, float), (k, ps)
    return cfg


def test_health_document_example(base):
    # curl -X GET http://localhost:5000/api/health
    r = requests.get(f"{base}/api/health", timeout=30)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    assert r.json() == {"status": "healthy", "message": "Trae Agent API is running"}


def test_config_document_example(base):
    # GET /api/config?config_file=trae_config.yaml&provider=openai&model=gpt-4: the document's
    # response, field for field (agentd runs in the directory holding trae_config.yaml).
    expected = {
        "config_file": "trae_config.yaml",
        "config_exists": True,
        "general_settings": {"default_provider": "openai", "max_steps": 20},
        "provider_settings": {
            "provider": "openai",
            "model": "gpt-4",
            "base_url": "https://api.openai.com/v1",
            "api_version": "v1",
            "api_key_set": True,
            "max_tokens": 4096,
            "temperature": 0.7,
            "top_p": 1.0,
        },
    }
    def documented(cfg):
        cfg.pop("sandbox")  # agentd's one addition (issue 5); its shape is checked above
        return cfg

    assert documented(get_config(base, "?config_file=trae_config.yaml&provider=openai&model=gpt-4")) == expected
    # The cURL example: curl -X GET "http://localhost:5000/api/config?config_file=trae_config.yaml"
    assert documented(get_config(base, "?config_file=trae_config.yaml")) == expected


def test_config_defaults_to_TRAE_CONFIG_FILE(stack, base):
    cfg = get_config(base)
    assert cfg["config_file"] == str(stack.config_paths["env"])
    assert cfg["config_exists"] is True
    assert cfg["general_settings"] == {"default_provider": "anthropic", "max_steps": 42}
    ps = cfg["provider_settings"]
    assert ps["provider"] == "anthropic"
    assert ps["model"] == "claude-from-env-file"
    assert ps["max_tokens"] == 2048
    assert ps["temperature"] == 0.25
    assert ps["top_p"] == 0.9
    # The file has no key for anthropic; ANTHROPIC_API_KEY in the environment provides one.
    assert ps["api_key_set"] is True


def test_config_precedence_request_over_environment_over_file(base):
    # Environment over file: OPENROUTER_BASE_URL beats the file's base_url.
    ps = get_config(base, "?provider=openrouter")["provider_settings"]
    assert ps["provider"] == "openrouter"
    assert ps["model"] == "router-file-model"
    assert ps["base_url"] == "https://env.example/router"
    assert ps["api_key_set"] is True
    # Request over both: the model asked for wins.
    ps = get_config(base, "?provider=openrouter&model=request-model")["provider_settings"]
    assert ps["model"] == "request-model"
    assert ps["base_url"] == "https://env.example/router"
    # Request's config_file over TRAE_CONFIG_FILE.
    cfg = get_config(base, "?config_file=trae_config.yaml")
    assert cfg["config_file"] == "trae_config.yaml"
    assert cfg["general_settings"]["default_provider"] == "openai"


def test_config_api_key_not_set(base):
    # No key for google anywhere (file, environment).
    ps = get_config(base, "?provider=google")["provider_settings"]
    assert ps["provider"] == "google"
    assert ps["api_key_set"] is False


def test_config_legacy_json_file(stack, base):
    cfg = get_config(base, f"?config_file={stack.config_paths['legacy']}")
    assert cfg["config_file"] == str(stack.config_paths["legacy"])
    assert cfg["config_exists"] is True
    assert cfg["general_settings"] == {"default_provider": "openai", "max_steps": 30}
    ps = cfg["provider_settings"]
    assert (ps["provider"], ps["model"], ps["max_tokens"], ps["api_key_set"]) == ("openai", "gpt-4o", 8192, True)
    assert ps["temperature"] == 0.3


def test_config_named_file_missing(base):
    # Reported, as the original does (config_exists), not hidden behind a default file.
    cfg = get_config(base, "?config_file=no_such_config.yaml")
    assert cfg["config_file"] == "no_such_config.yaml"
    assert cfg["config_exists"] is False


def test_tools(base):
    # curl -X GET http://localhost:5000/api/tools
    r = requests.get(f"{base}/api/tools", timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"status", "tools", "total_tools"}, body.keys()
    assert body["status"] == "success"
    names = [t["name"] for t in body["tools"]]
    assert len(names) == len(set(names)), names
    assert set(names) == EXPECTED_TOOLS
    assert type(body["total_tools"]) is int and body["total_tools"] == len(body["tools"])
    for t in body["tools"]:
        assert isinstance(t["description"], str) and t["description"].strip(), t["name"]


def test_tasks_lists_tasks_of_both_dialects(stack, base):
    created = stack.create_task("visible to the Trae dialect")
    # curl -X GET http://localhost:5000/api/tasks
    r = requests.get(f"{base}/api/tasks", timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"status", "active_tasks", "total_tasks"}
    assert body["status"] == "success"
    # The most recent 100 tasks (oldest first); total_tasks counts them all.
    assert type(body["total_tasks"]) is int and len(body["active_tasks"]) == min(100, body["total_tasks"])
    for t in body["active_tasks"]:
        assert set(t) == {"task_id", "status", "start_time", "duration"}, t
        assert isinstance(t["task_id"], str)
        assert t["status"] in {"created", "running", "completed", "failed", "stopped"}
        assert type(t["start_time"]) in (int, float) and t["start_time"] > 1.6e9
        assert type(t["duration"]) in (int, float) and t["duration"] >= 0
    mine = [t for t in body["active_tasks"] if t["task_id"] == created["task_id"]]
    assert len(mine) == 1 and mine[0]["status"] == "created"


def test_tasks_listing_is_bounded_and_pages_with_limit_and_offset(fresh_stack):
    """GET /api/tasks returns the most recent 100 by default (a store of
    100,000 tasks does not come back in one response); limit/offset page
    through all of them, oldest first."""
    s = fresh_stack()
    ids = [s.create_task(f"listing {i}")["task_id"] for i in range(105)]
    url = f"{s.trae_url}/api/tasks"

    def listed(**params) -> list[str]:
        r = requests.get(url, params=params, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["total_tasks"] == 105
        return [t["task_id"] for t in r.json()["active_tasks"]]

    every = listed(limit=1000)
    assert sorted(every) == sorted(ids)
    # Oldest first (tasks created in the same millisecond tie-break by id).
    assert set(every[:90]) <= set(ids[:95])
    assert listed() == every[5:]
    assert listed(limit=10, offset=100) == every[100:]
    assert listed(limit=3, offset=0) == every[:3]
    for bad in ({"limit": 0}, {"limit": 1001}, {"offset": -1}):
        assert_trae_error(requests.get(url, params=bad, timeout=30), 400)


def test_task_status_of_a_task(stack, base):
    created = stack.create_task("status please")
    r = requests.get(f"{base}/api/tasks/{created['task_id']}/status", timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"status", "task_id", "task_status", "start_time", "duration", "messages"}, body
    assert body["status"] == "success"
    assert body["task_id"] == created["task_id"]
    assert body["task_status"] == "created"
    assert type(body["start_time"]) in (int, float) and body["start_time"] > 1.6e9
    assert type(body["duration"]) in (int, float)
    assert isinstance(body["messages"], list)


def test_unknown_task_document_examples(base):
    # curl -X GET http://localhost:5000/api/tasks/abc-123/status
    body = assert_trae_error(requests.get(f"{base}/api/tasks/abc-123/status", timeout=30), 404)
    assert "abc-123" in body["error"]
    # curl -N http://localhost:5000/api/tasks/abc-123/stream
    assert_trae_error(requests.get(f"{base}/api/tasks/abc-123/stream", timeout=30), 404)
    # curl -X POST http://localhost:5000/api/tasks/abc-123/stop
    assert_trae_error(requests.post(f"{base}/api/tasks/abc-123/stop", timeout=30), 404)
