"""AutoGPTClient: the Agent Protocol REST API of agentd (/ap/v1/agent/...)
over `requests`, as the AutoGPT API document's "Python客户端" uses it."""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, List, Optional, Tuple, Union
from urllib.parse import quote, unquote, urlsplit

import requests

from . import _retry, _sse
from ._multipart import FileSource, MultipartUpload
from .errors import APIConnectionError, AutoGPTError, error_from_response
from .models import Artifact, Page, Record, Step, Task, TaskEvent

__version__ = "0.1.0"

PREFIX = "/ap/v1/agent"
# A step is one LLM call plus its tool calls (bash allows 120 s per command),
# so it may take far longer than an ordinary request.
STEP_TIMEOUT = 900.0
# agentd caps page sizes at 100.
MAX_PAGE_SIZE = 100

Timeout = Union[float, Tuple[float, float]]
# What a response body being read can fail with once the connection drops.
_STREAM_ERRORS = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


class AutoGPTClient:
    """A client of agentd's Agent Protocol API.

    base_url: the server, e.g. "http://localhost:8000" (the document's
        "http://localhost:8000/ap/v1/agent" works too).
    api_key: sent as `Authorization: Bearer <key>` when agentd requires keys.
    timeout: seconds for connecting and for each read (a number, or a
        (connect, read) pair); execute_step allows STEP_TIMEOUT.
    max_retries: retries after the first attempt on 429, 5xx and connection
        errors, waiting with exponential backoff (backoff_factor * 2**n,
        at most max_backoff seconds) or as long as Retry-After says. Calls
        that create or run something (POST) are retried only when the server
        did not act: 429 (refused), 503 (Envoy could not reach agentd, or
        agentd was shutting down) and failures to connect, so that a step is
        not run twice (a step cut off by a shutdown is answered 503 too: its
        retry is the task's next step, with the same input). A Retry-After longer than max_retry_wait is not waited
        for: the error is raised at once.
    """

    def __init__(
        self,
        base_url: str = "http://localhost:8000",
        api_key: Optional[str] = None,
        timeout: Timeout = 60.0,
        max_retries: int = 3,
        *,
        backoff_factor: float = 0.5,
        max_backoff: float = 30.0,
        max_retry_wait: float = 120.0,
        session: Optional[requests.Session] = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.base_url = _api_root(base_url)
        self.timeout = timeout
        self.max_retries = max(0, int(max_retries))
        self.backoff_factor = backoff_factor
        self.max_backoff = max_backoff
        self.max_retry_wait = max_retry_wait
        self._sleep = sleep
        self._owns_session = session is None
        self.session = session or requests.Session()
        if self._owns_session:
            self.session.headers["User-Agent"] = f"agentd-autogpt-client/{__version__}"
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    # ---- tasks ----------------------------------------------------------

    def create_task(self, input: Optional[str] = None, additional_input: Optional[dict] = None) -> Task:
        """POST /tasks."""
        return Task.from_json(self._json("POST", "/tasks", json=_body(input, additional_input)))

    def list_tasks(
        self,
        page: int = 1,
        page_size: int = 10,
        status: Optional[str] = None,
        created_after: Optional[str] = None,
    ) -> Page[Task]:
        """GET /tasks: one page, optionally only tasks with `status` (created,
        running, completed, failed, stopped) or created after an ISO-8601
        instant."""
        params = {"page": page, "size": page_size, "status": status, "created_after": created_after}
        data = self._json("GET", "/tasks", params=params)
        return _page(data, "tasks", Task.from_json)

    def get_task(self, task_id: str) -> Task:
        return Task.from_json(self._json("GET", f"/tasks/{_seg(task_id)}"))

    def delete_task(self, task_id: str) -> Record:
        """DELETE /tasks/{id}: removes its steps, artifacts, events and files."""
        return Record(self._json("DELETE", f"/tasks/{_seg(task_id)}"))

    # ---- steps ----------------------------------------------------------

    def execute_step(
        self,
        task_id: str,
        input: Optional[str] = None,
        additional_input: Optional[dict] = None,
        timeout: Optional[Timeout] = None,
    ) -> Step:
        """POST /tasks/{id}/steps: runs the next step and returns it (the first
        step starts the agent). `is_last` says whether the task is finished."""
        data = self._json(
            "POST",
            f"/tasks/{_seg(task_id)}/steps",
            json=_body(input, additional_input),
            timeout=timeout or _at_least(self.timeout, STEP_TIMEOUT),
        )
        return Step.from_json(data)

    def list_steps(self, task_id: str, page: int = 1, page_size: int = 10) -> Page[Step]:
        data = self._json("GET", f"/tasks/{_seg(task_id)}/steps", params={"page": page, "size": page_size})
        return _page(data, "steps", Step.from_json)

    def get_step(self, task_id: str, step_id: str) -> Step:
        return Step.from_json(self._json("GET", f"/tasks/{_seg(task_id)}/steps/{_seg(step_id)}"))

    # ---- artifacts ------------------------------------------------------

    def get_artifacts(self, task_id: str) -> List[Artifact]:
        """Every artifact of the task (all pages)."""
        out: List[Artifact] = []
        page = 1
        while True:
            data = self._json(
                "GET", f"/tasks/{_seg(task_id)}/artifacts", params={"page": page, "size": MAX_PAGE_SIZE}
            )
            listed = _page(data, "artifacts", Artifact.from_json)
            out.extend(listed)
            pages = listed.pagination.get("pages") or listed.pagination.get("total_pages") or 1
            if page >= pages or not listed.items:
                return out
            page += 1

    def upload_artifact(
        self,
        task_id: str,
        file: FileSource,
        relative_path: Optional[str] = None,
        file_name: Optional[str] = None,
    ) -> Artifact:
        """POST /tasks/{id}/artifacts (multipart, streamed from disk).

        file: a path, bytes (then file_name is required) or a binary file
        object. relative_path: a directory in the task workspace ("data") or
        a path ending in the file name ("data/sales_data.csv"), kept as given.
        """
        fields = {"relative_path": relative_path} if relative_path is not None else {}
        body = MultipartUpload(file, file_name=file_name, fields=fields)
        data = self._json(
            "POST",
            f"/tasks/{_seg(task_id)}/artifacts",
            data=body,
            headers={"Content-Type": body.content_type},
        )
        return Artifact.from_json(data)

    def download_artifact(
        self,
        task_id: str,
        artifact_id: str,
        dest: Union[None, str, "os.PathLike[str]", BinaryIO] = None,
        chunk_size: int = 1 << 16,
    ) -> Union[bytes, Path, int]:
        """GET /tasks/{id}/artifacts/{artifact_id}, streamed.

        dest None: returns the bytes. A directory: writes the file there under
        the name the server sends (Content-Disposition) and returns its path.
        Another path: writes that file (atomically) and returns the path. A
        binary file object: writes into it and returns the byte count.
        """
        resp = self._request("GET", f"/tasks/{_seg(task_id)}/artifacts/{_seg(artifact_id)}", stream=True)
        with resp:
            chunks = resp.iter_content(chunk_size)
            try:
                if dest is None:
                    return b"".join(chunks)
                if hasattr(dest, "write"):
                    return _copy(chunks, dest)
                path = Path(dest)
                if path.is_dir():
                    path = path / (_disposition_name(resp.headers.get("Content-Disposition")) or artifact_id)
                _write_atomically(path, chunks)
                return path
            except _STREAM_ERRORS as e:
                # Not retried: part of the file may already be written to `dest`.
                raise APIConnectionError(f"download of artifact {artifact_id} broke off: {e}") from e

    def delete_artifact(self, task_id: str, artifact_id: str) -> Record:
        return Record(self._json("DELETE", f"/tasks/{_seg(task_id)}/artifacts/{_seg(artifact_id)}"))

    # ---- agent ----------------------------------------------------------

    def get_status(self) -> Record:
        """GET /status: agent id, version, active/total tasks, memory and API usage."""
        return Record(self._json("GET", "/status"))

    def restart(self) -> Record:
        """POST /restart: running tasks end (as failed); stored data stays."""
        return Record(self._json("POST", "/restart", json={}))

    # ---- events ---------------------------------------------------------

    def events(self, task_id: str, after_seq: int = 0, include_heartbeats: bool = False) -> Iterator[TaskEvent]:
        """Follows the task's event log (GET /tasks/{id}/events, SSE): replays
        the events after `after_seq`, then live ones, up to and including
        `end`. A dropped connection is resumed after the last event seen
        (up to max_retries times in a row), so no event is lost or repeated.
        Heartbeats (sent while the task is idle) are skipped unless asked for.
        """
        last = after_seq
        failures = 0
        while True:
            try:
                for event in self._event_stream(task_id, last):
                    failures = 0
                    if event.type == "heartbeat":
                        if include_heartbeats:
                            yield event
                        continue
                    if event.seq <= last:
                        continue  # never repeat an event already delivered
                    last = event.seq
                    yield event
                    if event.type == "end":
                        return
                problem: Exception = APIConnectionError(f"event stream of {task_id} closed before `end`")
            except _STREAM_ERRORS as e:
                problem = e
            failures += 1
            if failures > self.max_retries:
                raise APIConnectionError(f"event stream of {task_id} failed after seq {last}: {problem}") from problem
            self._sleep(self._backoff(failures - 1))

    def _event_stream(self, task_id: str, after_seq: int) -> Iterator[TaskEvent]:
        params = {"after_seq": after_seq} if after_seq else None
        resp = self._request(
            "GET",
            f"/tasks/{_seg(task_id)}/events",
            params=params,
            stream=True,
            headers={"Accept": "text/event-stream"},
        )
        with resp:
            for data in _sse.events(resp.iter_content(chunk_size=None)):
                yield TaskEvent.from_json(json.loads(data))

    # ---- plumbing -------------------------------------------------------

    def close(self) -> None:
        if self._owns_session:
            self.session.close()

    def __enter__(self) -> "AutoGPTClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _json(self, method: str, path: str, **kwargs) -> Any:
        resp = self._request(method, path, **kwargs)
        try:
            return resp.json()
        except ValueError as e:
            raise AutoGPTError(f"{method} {resp.url}: the answer is not JSON: {resp.text[:200]!r}") from e

    def _request(self, method: str, path: str, *, timeout: Optional[Timeout] = None, **kwargs) -> requests.Response:
        """Sends the request, retrying as the class docstring says; returns a
        successful response or raises APIError / APIConnectionError."""
        url = self.base_url + path
        if "params" in kwargs and kwargs["params"]:
            kwargs["params"] = {k: v for k, v in kwargs["params"].items() if v is not None}
        attempt = 0
        while True:
            try:
                resp = self.session.request(method, url, timeout=timeout or self.timeout, **kwargs)
            except requests.RequestException as e:
                if attempt >= self.max_retries or not _retry.should_retry_exception(method, e):
                    raise APIConnectionError(f"{method} {url}: {e}") from e
                self._sleep(self._backoff(attempt))
                attempt += 1
                continue
            if resp.status_code < 400:
                return resp
            wait = self._retry_wait(method, resp, attempt)
            if wait is None:
                raise error_from_response(resp)
            resp.close()
            self._sleep(wait)
            attempt += 1

    def _retry_wait(self, method: str, resp: requests.Response, attempt: int) -> Optional[float]:
        """Seconds to wait before retrying `resp`, or None to give up."""
        if attempt >= self.max_retries or not _retry.should_retry_status(method, resp.status_code):
            return None
        after = _retry.retry_after_seconds(resp.headers.get("Retry-After"))
        if after is None:
            return self._backoff(attempt)
        return after if after <= self.max_retry_wait else None

    def _backoff(self, attempt: int) -> float:
        return _retry.backoff_seconds(attempt, self.backoff_factor, self.max_backoff)


# ---- helpers --------------------------------------------------------------


def _api_root(base_url: str) -> str:
    """"http://host:8000" or "http://host:8000/ap/v1/agent" -> the latter."""
    base = base_url.rstrip("/")
    return base if urlsplit(base).path.endswith(PREFIX) else base + PREFIX


def _seg(value: str) -> str:
    """An id as one path segment (ids are UUIDs; anything else is escaped)."""
    if not value:
        raise ValueError("an id must not be empty")
    return quote(str(value), safe="")


def _body(input: Optional[str], additional_input: Optional[dict]) -> dict:
    body: dict = {}
    if input is not None:
        body["input"] = input
    if additional_input is not None:
        body["additional_input"] = additional_input
    return body


def _page(data: dict, key: str, build: Callable[[dict], Any]) -> Page:
    return Page([build(x) for x in data.get(key) or []], Record(data.get("pagination") or {}), data)


def _at_least(timeout: Timeout, seconds: float) -> Timeout:
    if isinstance(timeout, tuple):
        return (timeout[0], max(timeout[1], seconds))
    return max(timeout, seconds)


def _copy(chunks: Iterator[bytes], out: BinaryIO) -> int:
    n = 0
    for chunk in chunks:
        out.write(chunk)
        n += len(chunk)
    return n


def _write_atomically(path: Path, chunks: Iterator[bytes]) -> None:
    """Writes to a temporary file beside `path`, then renames it: an
    interrupted download never leaves a truncated file under the real name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            _copy(chunks, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_FILENAME_STAR = re.compile(r"filename\*\s*=\s*([^']*)'[^']*'([^;]+)", re.I)
_FILENAME = re.compile(r'filename\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;]+))', re.I)


def _disposition_name(header: Optional[str]) -> Optional[str]:
    """The file name of a Content-Disposition header (RFC 6266: filename*
    wins over filename), reduced to a safe base name."""
    if not header:
        return None
    name = None
    star = _FILENAME_STAR.search(header)
    if star:
        name = unquote(star.group(2).strip(), encoding=star.group(1) or "utf-8", errors="replace")
    else:
        plain = _FILENAME.search(header)
        if plain:
            name = plain.group(1) if plain.group(1) is not None else plain.group(2).strip()
    if not name:
        return None
    name = name.replace("\\", "/").rsplit("/", 1)[-1].replace("\0", "")
    return None if name in ("", ".", "..") else name
