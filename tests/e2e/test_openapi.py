"""The OpenAPI descriptions (issue 7): served by Envoy at stable paths, and kept in step with the protos.

- Envoy serves openapi/<file> itself (a direct_response from the copy scripts/envoy-config puts next to the
  rendered config) at /openapi/<file> on both REST ports, as application/yaml, byte for byte the repository's file.
- Every google.api.http binding in agentd's descriptor set (`agentd descriptor-set`, what the transcoder loads) is an
  operation (method + path) of its dialect's OpenAPI file, and every operation there is a binding; path parameters
  match the template's fields, query parameters match the request's other fields (GET/DELETE and `body: "<field>"`),
  and JSON request bodies (`body: "*"`) document exactly the request's non-path fields. Deliberate differences are
  listed in EXCEPTIONS, each with its reason.
"""

from __future__ import annotations

import re
import subprocess

import pytest
import requests
import yaml

import helpers

OPENAPI = helpers.REPO / "openapi"
SERVED = ("trae-agent.yaml", "agent-protocol.yaml", "agent-protocol-v1.official.yml")
# Which OpenAPI file describes which service's bindings.
SPECS = {"agentd.trae.v1.TraeService": "trae-agent.yaml", "agentd.agent.v1.AgentService": "agent-protocol.yaml"}
HTTP_METHODS = ("get", "put", "post", "delete", "patch")

# (service, rpc) -> {kind: {names}}: differences between a binding's request fields and its OpenAPI operation
# that are on purpose. Kinds: "query_not_documented", "body_not_documented".
EXCEPTIONS: dict[tuple[str, str], dict[str, set[str]]] = {
    # file_name is for gRPC callers sending raw bytes; over REST the multipart part carries the file name.
    ("agentd.agent.v1.AgentService", "UploadArtifact"): {"query_not_documented": {"file_name"}},
}
# Operations with no binding (none: the WebSockets /ap/v1/agent/tasks/{id}/ws and /ap/v1/agent/logs/ws are agentd's
# own HTTP handler and are described in the README, not in these files).
OPENAPI_ONLY: set[tuple[str, str]] = set()


# ---- the descriptor set's bindings ---------------------------------------------


def bindings(tmp_path) -> list[dict]:
    from google.api import annotations_pb2, http_pb2  # noqa: F401  (registers the extension)
    from google.protobuf import descriptor_pb2

    out_file = tmp_path / "agentd.pb"
    out = subprocess.run([helpers.AGENTD_BIN, "descriptor-set", "--out", str(out_file)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    fds = descriptor_pb2.FileDescriptorSet.FromString(out_file.read_bytes())
    messages = {}
    for f in fds.file:
        for m in f.message_type:
            messages[f".{f.package}.{m.name}"] = m
    found = []
    for f in fds.file:
        for svc in f.service:
            full = f"{f.package}.{svc.name}"
            if full not in SPECS:
                continue
            for m in svc.method:
                assert m.options.HasExtension(annotations_pb2.http), f"{full}/{m.name} has no google.api.http"
                rule = m.options.Extensions[annotations_pb2.http]
                for r in [rule, *rule.additional_bindings]:
                    kind = r.WhichOneof("pattern")
                    assert kind in HTTP_METHODS, (full, m.name, kind)
                    found.append({
                        "service": full, "rpc": m.name, "method": kind, "path": getattr(r, kind), "body": r.body,
                        "request": messages[m.input_type],
                    })
    return found


# ---- OpenAPI helpers ------------------------------------------------------------------


def load(name: str) -> dict:
    return yaml.safe_load((OPENAPI / name).read_text())


def resolve(doc: dict, node):
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), ref
        node = doc
        for part in ref[2:].split("/"):
            node = node[part]
    return node


def properties(doc: dict, schema) -> set[str]:
    schema = resolve(doc, schema)
    props = set(schema.get("properties", {}))
    for sub in schema.get("allOf", []):
        props |= properties(doc, sub)
    return props


def operations(doc: dict) -> dict[tuple[str, str], dict]:
    return {
        (method, path): op
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in HTTP_METHODS
    }


def path_params(template: str) -> set[str]:
    return {m.split("=")[0] for m in re.findall(r"\{([^}]+)\}", template)}


# ---- served at stable paths ------------------------------------------------------------


@pytest.mark.parametrize("name", SERVED)
def test_openapi_is_served(stack, base, name):
    r = requests.get(f"{base}/openapi/{name}", timeout=30)
    assert r.status_code == 200, r.text[:300]
    assert r.headers["content-type"] == "application/yaml", r.headers
    assert r.content == (OPENAPI / name).read_bytes(), "served document differs from the repository's"
    doc = yaml.safe_load(r.content)
    assert str(doc["openapi"]).startswith("3.") and doc["paths"], list(doc)
    head = requests.head(f"{base}/openapi/{name}", timeout=30)
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(r.content), head.headers


def test_openapi_paths_serve_nothing_else(stack):
    r = requests.get(f"{stack.trae_url}/openapi/nope.yaml", timeout=30)
    helpers.assert_trae_error(r, 404)
    r = requests.post(f"{stack.ap_url}/openapi/trae-agent.yaml", data=b"x", timeout=30)
    helpers.assert_trae_error(r, 404)


# ---- in step with the protos -----------------------------------------------------------


def test_every_binding_is_documented_and_nothing_else(tmp_path):
    found = bindings(tmp_path)
    assert {b["service"] for b in found} == set(SPECS), "no bindings found for a service"
    problems = []
    for service, spec in SPECS.items():
        documented = set(operations(load(spec)))
        bound = {(b["method"], b["path"]) for b in found if b["service"] == service}
        for method, path in sorted(bound - documented):
            problems.append(f"{spec}: no operation for {method.upper()} {path} ({service})")
        for method, path in sorted(documented - bound - OPENAPI_ONLY):
            problems.append(f"{spec}: {method.upper()} {path} is no google.api.http binding of {service}")
    assert not problems, "\n".join(problems)


def test_parameters_and_bodies_match_the_requests(tmp_path):
    problems = []
    for b in bindings(tmp_path):
        spec = SPECS[b["service"]]
        doc = load(spec)
        op = operations(doc).get((b["method"], b["path"]))
        if op is None:
            continue  # reported by test_every_binding_is_documented_and_nothing_else
        where = f"{spec} {b['method'].upper()} {b['path']} ({b['rpc']})"
        exc = EXCEPTIONS.get((b["service"], b["rpc"]), {})
        fields = {f.name for f in b["request"].field}
        in_path = path_params(b["path"])
        params = [resolve(doc, p) for p in op.get("parameters", [])]
        documented_path = {p["name"] for p in params if p["in"] == "path"}
        documented_query = {p["name"] for p in params if p["in"] == "query"}
        if documented_path != in_path:
            problems.append(f"{where}: path parameters {sorted(documented_path)}, template has {sorted(in_path)}")
        if not in_path <= fields:
            problems.append(f"{where}: template names fields the request lacks: {sorted(in_path - fields)}")
        if b["body"] == "*":
            query = set()
            body_fields = fields - in_path
            content = resolve(doc, op.get("requestBody", {})).get("content", {})
            if "application/json" not in content:
                problems.append(f"{where}: body \"*\" but no application/json request body")
            else:
                props = properties(doc, content["application/json"].get("schema", {}))
                missing = body_fields - props - exc.get("body_not_documented", set())
                if missing:
                    problems.append(f"{where}: body fields not documented: {sorted(missing)}")
                if props - body_fields:
                    problems.append(f"{where}: documented body fields the request lacks: {sorted(props - body_fields)}")
        else:
            query = fields - in_path - ({b["body"]} if b["body"] else set())
            if b["body"] and "requestBody" not in op:
                problems.append(f"{where}: body \"{b['body']}\" but no requestBody")
        missing = query - documented_query - exc.get("query_not_documented", set())
        if missing:
            problems.append(f"{where}: query parameters not documented: {sorted(missing)}")
        if documented_query - query:
            problems.append(f"{where}: documented query parameters the request lacks: {sorted(documented_query - query)}")
    assert not problems, "\n".join(problems)


def test_exceptions_are_still_needed(tmp_path):
    """Each EXCEPTIONS entry names a real binding and fields its request has (so stale entries go)."""
    by_rpc = {(b["service"], b["rpc"]): b for b in bindings(tmp_path)}
    for key, kinds in EXCEPTIONS.items():
        assert key in by_rpc, f"EXCEPTIONS names {key}, which has no binding"
        fields = {f.name for f in by_rpc[key]["request"].field}
        for kind, names in kinds.items():
            assert kind in ("query_not_documented", "body_not_documented"), kind
            assert names <= fields, f"{key} {kind}: {sorted(names - fields)} are no fields of the request"
