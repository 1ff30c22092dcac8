"""When to retry a request, and how long to wait first."""

from __future__ import annotations

import email.utils
import random
import time
from typing import Optional

import requests
import urllib3.exceptions

# Statuses that say "try again later". 501 (NOT_IMPLEMENTED) is permanent.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# For calls that create or run something (POST), only the statuses after
# which the server did not act (429: refused; 503: Envoy could not reach
# agentd, or agentd was shutting down): a retry must not run a step twice.
# A step agentd cut off as it shut down also answers 503: it was answered as
# interrupted, so its retry is the task's next step, with the same input.
RETRY_STATUSES_UNSAFE = frozenset({429, 503})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE", "PUT"})


def should_retry_status(method: str, status: int) -> bool:
    allowed = RETRY_STATUSES if method in IDEMPOTENT_METHODS else RETRY_STATUSES_UNSAFE
    return status in allowed


def should_retry_exception(method: str, exc: requests.RequestException) -> bool:
    """Idempotent calls retry any connection failure or timeout; others only
    failures to connect, when the request never reached the server."""
    if method in IDEMPOTENT_METHODS:
        return isinstance(exc, (requests.ConnectionError, requests.Timeout))
    return _never_sent(exc)


def _never_sent(exc: requests.RequestException) -> bool:
    if isinstance(exc, requests.ConnectTimeout):
        return True
    if not isinstance(exc, requests.ConnectionError):
        return False
    reason = exc.args[0] if exc.args else None
    reason = getattr(reason, "reason", reason)  # MaxRetryError wraps the cause
    return isinstance(reason, (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError))


def retry_after_seconds(value: Optional[str]) -> Optional[float]:
    """Retry-After as seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def backoff_seconds(attempt: int, factor: float, cap: float) -> float:
    """Exponential backoff with jitter: about factor * 2**attempt, at most cap.
    The jitter (50-100 %) keeps many clients from retrying in lockstep."""
    return min(cap, factor * (2**attempt)) * random.uniform(0.5, 1.0)
