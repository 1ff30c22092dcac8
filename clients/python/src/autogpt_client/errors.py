"""Exceptions raised by AutoGPTClient.

agentd answers errors on /ap/v1/... with the document's envelope:

    {"success": false, "message": "...",
     "error": {"code": "TASK_NOT_FOUND", "message": "...", "details": {"task_id": "..."}}}

APIError keeps that envelope whole and exposes its parts as attributes. The
Trae dialect's {"status": "error", "error": "..."} and non-JSON bodies (a
proxy's own page) are understood too.
"""

from __future__ import annotations

from typing import Any, Optional

import requests
from requests.structures import CaseInsensitiveDict

from ._retry import retry_after_seconds


class AutoGPTError(Exception):
    """Base class of every error this client raises."""


class APIConnectionError(AutoGPTError):
    """The server could not be reached, or the connection failed mid-answer,
    and retrying did not help."""


class APIError(AutoGPTError):
    """The server answered with an HTTP error status.

    Attributes: status_code, code (e.g. "TASK_NOT_FOUND"), message, details
    (dict), envelope (the parsed JSON body, or None), text (the raw body),
    headers, method, url.
    """

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        code: Optional[str] = None,
        details: Optional[dict] = None,
        envelope: Any = None,
        text: str = "",
        headers: Optional[dict] = None,
        method: str = "",
        url: str = "",
    ):
        self.status_code = status_code
        self.code = code
        self.message = message
        self.details = details or {}
        self.envelope = envelope
        self.text = text
        # Case-insensitive: proxies such as Envoy send lower-case names.
        self.headers = CaseInsensitiveDict(headers or {})
        self.method = method
        self.url = url
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.method} {self.url} -> " if self.method else ""
        code = f" {self.code}" if self.code else ""
        return f"{where}HTTP {self.status_code}{code}: {self.message}"

    @property
    def retry_after(self) -> Optional[float]:
        """Seconds the server asked to wait (Retry-After), if it said."""
        return retry_after_seconds(self.headers.get("Retry-After"))


class AuthenticationError(APIError):
    """401: a missing or wrong API key."""


class NotFoundError(APIError):
    """404: TASK_NOT_FOUND, STEP_NOT_FOUND, ARTIFACT_NOT_FOUND or ROUTE_NOT_FOUND."""


class ConflictError(APIError):
    """409: e.g. TASK_ALREADY_RUNNING."""


class RateLimitError(APIError):
    """429: RATE_LIMIT_EXCEEDED or INSUFFICIENT_RESOURCES (see retry_after)."""


_BY_STATUS = {401: AuthenticationError, 404: NotFoundError, 409: ConflictError, 429: RateLimitError}


def error_from_response(resp: requests.Response) -> APIError:
    """Builds the exception for an error response (its body is read here)."""
    text = resp.text
    try:
        body = resp.json()
    except ValueError:
        body = None
    code, message, details = _parse_envelope(body)
    cls = _BY_STATUS.get(resp.status_code, APIError)
    return cls(
        resp.status_code,
        message or text.strip() or resp.reason or "error",
        code=code,
        details=details,
        envelope=body,
        text=text,
        headers=resp.headers,
        method=resp.request.method if resp.request is not None else "",
        url=resp.url,
    )


def _parse_envelope(body: Any) -> tuple[Optional[str], Optional[str], dict]:
    if not isinstance(body, dict):
        return None, None, {}
    err = body.get("error")
    if isinstance(err, dict):  # Agent Protocol envelope
        details = err.get("details") if isinstance(err.get("details"), dict) else {}
        return err.get("code"), err.get("message") or body.get("message"), details
    if isinstance(err, str):  # Trae envelope
        return None, err, {}
    return None, body.get("message") if isinstance(body.get("message"), str) else None, {}
