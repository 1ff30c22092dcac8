"""Fixtures: agentd and the real Envoy as processes on free 127.0.0.1 ports.

- `stack` (session): one agentd + one Envoy shared by most tests.
- `fresh_stack` (function): a factory for a private stack, for tests that
  restart agentd; keep its use rare (each start costs a couple of seconds).
- `base`: both REST listeners (the Trae role port and the Agent Protocol
  role port), so that REST tests run against each.

On a failing test the tails of agentd's and Envoy's logs are attached to
the report.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import helpers
from helpers import Stack


def pytest_configure(config):
    for name, path in (("AGENTD_BIN", helpers.AGENTD_BIN), ("ENVOY_BIN", helpers.ENVOY_BIN)):
        if not os.access(path, os.X_OK):
            raise pytest.UsageError(f"{name}={path} is not an executable (build agentd / run scripts/setup first)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for s in helpers.LIVE_STACKS:
            if s.agentd is not None or s.envoy is not None:
                rep.sections.append((f"server logs ({s.root.name})", s.logs()))


def _start(root: Path) -> Stack:
    paths = helpers.write_trae_configs(root)
    stack = Stack(root=root, data_dir=root / "data", env=helpers.config_env(paths), config_paths=paths)
    stack.start()
    return stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """The shared agentd + Envoy. Attributes: trae_url, ap_url, grpc_target,
    envoy_grpc_target, data_dir, agentd_pid (see helpers.Stack)."""
    s = _start(tmp_path_factory.mktemp("stack"))
    helpers.LIVE_STACKS.append(s)
    yield s
    s.stop()
    helpers.LIVE_STACKS.remove(s)


@pytest.fixture
def fresh_stack(tmp_path):
    """A private agentd + Envoy for one test (restarts, persistence)."""
    started: list[Stack] = []

    def make() -> Stack:
        s = _start(tmp_path / f"stack{len(started)}")
        started.append(s)
        helpers.LIVE_STACKS.append(s)
        return s

    yield make
    for s in started:
        s.stop()
        helpers.LIVE_STACKS.remove(s)


@pytest.fixture(params=["trae_port", "ap_port"])
def base(request, stack) -> str:
    """Base URL of one of Envoy's two REST listeners; both serve both dialects."""
    return stack.trae_url if request.param == "trae_port" else stack.ap_url


@pytest.fixture
def task(stack) -> dict:
    """A new Agent Protocol task."""
    return stack.create_task("fixture task")
