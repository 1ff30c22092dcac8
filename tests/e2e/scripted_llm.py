"""A scripted OpenAI-/Anthropic-compatible LLM server on 127.0.0.1.

agentd reaches it through the ordinary `base_url` setting. Each request to
`/v1/chat/completions` (OpenAI) or `/v1/messages` (Anthropic) takes the next
scripted reply; when the script runs out, the server answers with a `task_done`
tool call so that runs end. Every request body is recorded.

    llm = ScriptedLLM().start()
    llm.script(openai_tool_call("bash", {"command": "ls"}), openai_text("done"))
    ... base_url = llm.openai_base_url ...
    llm.stop()
"""

import itertools
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_ids = itertools.count(1)


def _usage(i=10, o=5):
    return {"prompt_tokens": i, "completion_tokens": o, "total_tokens": i + o}


def openai_tool_call(name, arguments, text="", raw_arguments=None):
    """One assistant turn calling one tool (arguments: dict, or raw_arguments: str)."""
    call_id = f"call_{next(_ids)}"
    args = raw_arguments if raw_arguments is not None else json.dumps(arguments)
    return {"body": {
        "id": f"chatcmpl-{call_id}", "object": "chat.completion", "model": "scripted",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": text or None,
            "tool_calls": [{"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}]}}],
        "usage": _usage()}}


def openai_text(text):
    return {"body": {
        "id": f"chatcmpl-{next(_ids)}", "object": "chat.completion", "model": "scripted",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
        "usage": _usage()}}


def anthropic_tool_use(name, arguments, text=""):
    content = ([{"type": "text", "text": text}] if text else []) + [
        {"type": "tool_use", "id": f"toolu_{next(_ids)}", "name": name, "input": arguments}]
    return {"body": {"id": f"msg_{next(_ids)}", "type": "message", "role": "assistant", "model": "scripted",
                     "content": content, "stop_reason": "tool_use",
                     "usage": {"input_tokens": 10, "output_tokens": 5}}}


def _pieces(text, n):
    return [text[i:i + n] for i in range(0, len(text), n)]


def openai_stream(text="", calls=(), chunk_delay=0.0, piece=3):
    """One assistant turn streamed as Chat Completions chunks: `text` and each
    call's arguments (calls: [(name, arguments dict)]) in small pieces, usage
    last; `chunk_delay` seconds between events. Answered as SSE only when the
    request asks to stream (else as the same turn in one JSON body)."""
    def chunk(delta, finish=None):
        return {"id": "chatcmpl-stream", "object": "chat.completion.chunk", "model": "scripted",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": p}) for p in _pieces(text, piece)]
    tool_calls = []
    for i, (name, arguments) in enumerate(calls):
        call_id = f"call_{next(_ids)}"
        args = json.dumps(arguments)
        tool_calls.append({"id": call_id, "type": "function", "function": {"name": name, "arguments": args}})
        events.append(chunk({"tool_calls": [{"index": i, "id": call_id, "type": "function",
                                             "function": {"name": name, "arguments": ""}}]}))
        events += [chunk({"tool_calls": [{"index": i, "function": {"arguments": p}}]}) for p in _pieces(args, 4)]
    events.append(chunk({}, "tool_calls" if calls else "stop"))
    events.append({"id": "chatcmpl-stream", "object": "chat.completion.chunk", "model": "scripted",
                   "choices": [], "usage": _usage()})
    events.append("[DONE]")
    message = {"role": "assistant", "content": text or None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    body = {"id": "chatcmpl-stream", "object": "chat.completion", "model": "scripted",
            "choices": [{"index": 0, "finish_reason": "tool_calls" if calls else "stop", "message": message}],
            "usage": _usage()}
    return {"body": body, "stream": [{"data": e} for e in events], "chunk_delay": chunk_delay}


def error(status, message="scripted error", headers=None):
    return {"status": status, "headers": headers or {}, "body": {"error": {"message": message, "type": "scripted"}}}


def delayed(reply, seconds):
    return dict(reply, delay=seconds)


class ScriptedLLM:
    def __init__(self):
        self._lock = threading.Lock()
        self._script = []
        self.requests = []
        # Paths of streamed answers whose client closed the connection mid-stream.
        self.disconnects = []
        self._server = None

    def script(self, *replies):
        with self._lock:
            self._script.extend(replies)
        return self

    def _next(self, path):
        with self._lock:
            if self._script:
                return self._script.pop(0)
        if path.endswith("/messages"):
            return anthropic_tool_use("task_done", {})
        return openai_tool_call("task_done", {})

    def start(self):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {"unparsable": raw.decode("utf-8", "replace")}
                with outer._lock:
                    outer.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                reply = outer._next(self.path)
                if reply.get("delay"):
                    time.sleep(reply["delay"])
                if reply.get("stream") and body.get("stream") is True:
                    return self._stream(reply)
                data = json.dumps(reply.get("body", {})).encode()
                self.send_response(reply.get("status", 200))
                for k, v in reply.get("headers", {}).items():
                    self.send_header(k, v)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, reply):
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("connection", "close")
                self.end_headers()
                try:
                    for event in reply["stream"]:
                        frame = f"event: {event['event']}\n" if event.get("event") else ""
                        data = event["data"] if isinstance(event["data"], str) else json.dumps(event["data"])
                        self.wfile.write((frame + f"data: {data}\n\n").encode())
                        self.wfile.flush()
                        if reply.get("chunk_delay"):
                            time.sleep(reply["chunk_delay"])
                except (BrokenPipeError, ConnectionResetError):
                    with outer._lock:
                        outer.disconnects.append(self.path)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    @property
    def port(self):
        return self._server.server_address[1]

    @property
    def openai_base_url(self):
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def anthropic_base_url(self):
        return f"http://127.0.0.1:{self.port}"

    def stop(self):
        if self._server:
            self._server.shutdown()
            self._server.server_close()
