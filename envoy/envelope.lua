-- Error envelopes for transcoded REST calls.
--
-- Runs BEFORE envoy.filters.http.grpc_json_transcoder in http_filters, so on
-- the response path it sees the transcoder's output (encoders run in reverse).
-- With convert_grpc_status: false, a gRPC error reaches it as headers:
--   grpc-status, grpc-message (percent-encoded) and agentd's metadata
--   x-error-code (TASK_NOT_FOUND, ...), x-http-status (404, 409, 502, ...) and
--   x-error-details (a JSON object).
-- It answers, by path prefix:
--   /api/...   {"status":"error","error":"<message>"}
--   /ap/v1/... {"success":false,"message":"<message>",
--               "error":{"code":"<code>","message":"<message>","details":{...}}}
-- Envoy's own errors (no route, bad JSON, body too large) carry no
-- grpc-status and are shaped by local_reply_config in envoy.yaml instead.

local GRPC_CODE_NAMES = {
  ["1"] = "CANCELLED", ["2"] = "UNKNOWN", ["3"] = "INVALID_REQUEST",
  ["4"] = "DEADLINE_EXCEEDED", ["5"] = "NOT_FOUND", ["6"] = "ALREADY_EXISTS",
  ["7"] = "PERMISSION_DENIED", ["8"] = "INSUFFICIENT_RESOURCES", ["9"] = "FAILED_PRECONDITION",
  ["10"] = "ABORTED", ["11"] = "OUT_OF_RANGE", ["12"] = "NOT_IMPLEMENTED", ["13"] = "INTERNAL_ERROR",
  ["14"] = "UNAVAILABLE", ["15"] = "DATA_LOSS", ["16"] = "UNAUTHENTICATED",
}

-- JSON request bodies above this are refused with 413 before they reach agentd
-- (the transcoder does not cap JSON bodies; agentd's gRPC limit is 4 MiB).
-- Uploads (multipart) are streamed and limited by agentd itself.
local MAX_JSON_BODY = 4194304

local STRIP = {
  "grpc-status", "grpc-message", "grpc-status-details-bin", "grpc-accept-encoding",
  "x-error-code", "x-error-details", "x-http-status",
}

local function json_escape(s)
  return (s:gsub('[%c"\\]', function(c)
    if c == '"' then return '\\"'
    elseif c == '\\' then return '\\\\'
    elseif c == '\n' then return '\\n'
    elseif c == '\r' then return '\\r'
    elseif c == '\t' then return '\\t'
    else return string.format('\\u%04x', c:byte()) end
  end))
end

-- grpc-message is percent-encoded on the wire (gRPC spec).
local function pct_decode(s)
  return (s:gsub('%%(%x%x)', function(h) return string.char(tonumber(h, 16)) end))
end

local function envelope(mode, code, msg, details)
  msg = json_escape(msg)
  if mode == "api" then
    return '{"status":"error","error":"' .. msg .. '"}'
  end
  return '{"success":false,"message":"' .. msg .. '","error":{"code":"' .. json_escape(code) ..
         '","message":"' .. msg .. '","details":' .. (details or "{}") .. '}}'
end

function envoy_on_request(request_handle)
  local h = request_handle:headers()
  local path = h:get(":path") or ""
  local ct = h:get("content-type") or ""
  local mode = "none"
  if not ct:find("^application/grpc") then      -- native gRPC / gRPC-Web pass untouched
    if path:find("^/ap/") then mode = "ap"
    elseif path:find("^/api/") then mode = "api" end
  end
  request_handle:streamInfo():dynamicMetadata():set("agentd.envelope", "mode", mode)
  local length = tonumber(h:get("content-length") or "")
  if mode ~= "none" and length ~= nil and length > MAX_JSON_BODY and not ct:find("^multipart/") then
    -- A local reply: local_reply_config wraps the text in the path's envelope.
    request_handle:respond({[":status"] = "413", ["content-type"] = "text/plain"},
      "request body of " .. length .. " bytes exceeds the limit of " .. MAX_JSON_BODY .. " bytes")
  end
end

function envoy_on_response(response_handle)
  local md = response_handle:streamInfo():dynamicMetadata():get("agentd.envelope")
  local mode = md and md["mode"] or "none"
  if mode == "none" then return end
  local h = response_handle:headers()
  local grpc_status = h:get("grpc-status")
  if grpc_status == nil or grpc_status == "0" then
    -- Success (or an Envoy local reply): strip gRPC artefacts; the body is not buffered,
    -- so streams (SSE, downloads) flow through untouched.
    for _, k in ipairs(STRIP) do h:remove(k) end
    return
  end

  local body = response_handle:body(true)
  if body == nil then
    -- headers + trailers without DATA: the first call waited for the end of stream.
    body = response_handle:body(true)
  end
  local tr = response_handle:trailers()
  h = response_handle:headers()                   -- re-acquire after the yield in body()
  local function get(k)
    local v = h:get(k)
    if v == nil and tr ~= nil then v = tr:get(k) end
    return v
  end
  local msg = pct_decode(get("grpc-message") or "")
  local code = get("x-error-code") or GRPC_CODE_NAMES[grpc_status] or "INTERNAL_ERROR"
  local http_status = get("x-http-status")
  if grpc_status == "11" and msg:find("message length too large") then
    -- A chunked JSON body over the gRPC message limit (no content-length to refuse it by).
    code, http_status = "PAYLOAD_TOO_LARGE", "413"
  end
  body:setBytes(envelope(mode, code, msg, get("x-error-details")))
  if http_status ~= nil and http_status:find("^%d%d%d$") then h:replace(":status", http_status) end
  h:replace("content-type", "application/json")
  for _, k in ipairs(STRIP) do
    h:remove(k)
    if tr ~= nil then tr:remove(k) end
  end
end
