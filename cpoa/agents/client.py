"""The agent protocol over HTTP (contract §2): submit, poll, notify; bounded and idempotent.

One call here makes one logical request. Transient failures (connection errors, timeouts, 429,
502, 503, 504, a bodiless 5xx) are retried inside the call with exponential backoff, at most
``CPOA_SERVICE_RETRY_COUNT`` attempts; anything longer is the caller's to schedule.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import urllib.parse
import urllib.request
from collections.abc import Generator, Mapping
from typing import Any

import backoff
import requests

from cpoa import defaults, errors, logs
from cpoa.agents import deadline
from cpoa.settings import Settings

logger = logging.getLogger(__name__)

TRANSIENT_STATUS = frozenset({429, 502, 503, 504})
MAX_JSON_DEPTH = 64
"""Deepest nesting accepted in an agent reply; deeper is a malformed reply (naming 'body')."""
MAX_RETRY_AFTER_S = 3600.0
"""Longest Retry-After honoured; a larger (or absurd) one is capped."""
PENDING_STATUSES = frozenset({"PENDING", "STARTED", "RETRY", "PROGRESS", "RECEIVED"})


@dataclasses.dataclass(frozen=True)
class Reply:
    """What one submit or poll came back with.

    Attributes:
        outcome: ``"done"`` (``result`` holds the task's result), ``"accepted"`` (poll
            ``status_url``), ``"pending"`` (poll again later), ``"busy"`` (409: the key is being
            processed; poll if the task is known, else submit again later) or ``"lost"`` (the
            agent no longer knows the task: submit again with the same key).
        task_id: The agent's task id, when it gave one.
        status_url: Absolute URL to poll, when known.
        result: The task's result, for ``"done"``.
        http_status: The HTTP status code of the answer.
        retry_after: The answer's Retry-After in seconds, when it had one (an open task is
            polled again after that long).
        progress: A pending reply's ``progress``, as the agent sent it (unchecked: see
            :func:`cpoa.reports.read`); None when absent.
        partial: A pending reply's ``partial``, as sent (unchecked); None when absent.
    """

    outcome: str
    task_id: str | None = None
    status_url: str | None = None
    result: Any = None
    http_status: int = 0
    retry_after: float | None = None
    progress: Any = None
    partial: Any = None


def _session() -> requests.Session:
    """A Session that reads the environment once, not on every request, when it can.

    ``trust_env`` makes requests look up proxies, the CA bundle and .netrc on every request
    (about 0.3 ms of CPU, a third of a loopback request). Without proxies or a .netrc, the
    only answer that can change is the CA bundle, which is read here once instead.
    """
    session = deadline.mount(requests.Session())
    netrc = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    if not (urllib.request.getproxies() or os.path.exists(netrc)):
        session.trust_env = False
        session.verify = (os.environ.get("REQUESTS_CA_BUNDLE")
                          or os.environ.get("CURL_CA_BUNDLE") or True)
    return session


class AgentClient:
    """Talks to the agents of one deployment.

    Args:
        settings: Retry counts, backoff factor and body size limit.
        session: The ``requests.Session`` to use (tests may mount adapters on it).
        submit_timeout_s: Timeout of one submit request.
        poll_timeout_s: Timeout of one poll request.
        notify_timeout_s: Timeout of one ASF request.
        sleep: How backoff waits between attempts (tests may make it instant).
    """

    def __init__(self, settings: Settings, session: requests.Session | None = None, *,
                 submit_timeout_s: float = defaults.SUBMIT_TIMEOUT_S,
                 poll_timeout_s: float = defaults.POLL_REQUEST_TIMEOUT_S,
                 notify_timeout_s: float = defaults.NOTIFY_TIMEOUT_S) -> None:
        self.settings = settings
        self.session = session or _session()
        self.submit_timeout_s = submit_timeout_s
        self.poll_timeout_s = poll_timeout_s
        self.notify_timeout_s = notify_timeout_s
        self._request = backoff.on_exception(
            self._wait_times, errors.AgentUnavailable, jitter=None,
            max_tries=lambda: settings.retry_count, giveup=_wait_is_too_long,
            on_backoff=_log_backoff, logger=None)(self._request_once)

    def submit(self, service: str, base_url: str, path: str, body: Mapping[str, Any], *,
               idempotency_key: str, workflow_id: str, callback_url: str | None = None,
               log: logging.LoggerAdapter | None = None) -> Reply:
        """Submits a task; 200, 202 and 409 are normal outcomes.

        Args:
            callback_url: Sent as ``X-Callback-URL`` (contract §2): where the agent may POST
                when the task changes, to have it polled at once.

        Raises:
            AgentRejected: 4xx other than 409 and 429.
            AgentTaskFailed: the agent answered with a failed task.
            AgentUnavailable: still transient after every attempt.
            InvalidAgentResult: a reply that breaks the protocol (names the field).
        """
        url = base_url.rstrip("/") + path
        headers = _headers(idempotency_key, workflow_id)
        if callback_url:
            headers["X-Callback-URL"] = callback_url
        status, payload, retry_after = self._request(
            "POST", url, service=service, json_body=body, timeout=self.submit_timeout_s,
            headers=headers, log=log)
        if status == 409:
            reply = self._busy(service, base_url, payload, status)
        elif status == 202:
            reply = self._accepted(service, base_url, payload, status)
        else:
            reply = self._task_reply(service, base_url, payload, status, url)
        return dataclasses.replace(reply, retry_after=retry_after)

    def poll(self, service: str, base_url: str, status_url: str, *, workflow_id: str,
             idempotency_key: str = "", log: logging.LoggerAdapter | None = None) -> Reply:
        """Polls a task's status once; never sleeps a polling interval.

        Raises:
            Like :meth:`submit`.
        """
        status, payload, retry_after = self._request(
            "GET", status_url, service=service, json_body=None, timeout=self.poll_timeout_s,
            headers=_headers(idempotency_key, workflow_id), log=log, lost_on_404=True)
        if status == 404:
            return Reply("lost", http_status=status)
        if status == 409:  # the agent is busy with the key: as good as pending
            return Reply("pending", http_status=status, retry_after=retry_after)
        reply = self._task_reply(service, base_url, payload, status, status_url)
        return dataclasses.replace(reply, retry_after=retry_after)

    def notify(self, service: str, url: str, body: Mapping[str, Any], *, workflow_id: str,
               idempotency_key: str = "", log: logging.LoggerAdapter | None = None,
               once: bool = False, timeout_s: float | None = None) -> int:
        """Posts one notification (ASF) and returns the HTTP status of a 2xx answer.

        Args:
            once: One attempt, no inline retries (the caller has its own retry schedule).
            timeout_s: Request timeout; the client's notify timeout by default.

        Raises:
            AgentError: any non-2xx answer, after the transient retries.
        """
        headers = _headers(idempotency_key or workflow_id, workflow_id)
        send = self._request_once if once else self._request
        status, _, _ = send("POST", url, service=service, json_body=body,
                            timeout=timeout_s or self.notify_timeout_s, headers=headers,
                            log=log, expect_json=False)
        if status == 409:
            return status  # the receiver already holds this key
        if not 200 <= status < 300:
            raise errors.AgentRejected(f"{service} answered HTTP {status}", service=service,
                                       status_code=status, url=url)
        return status

    # -- one request ------------------------------------------------------------------------

    def _request_once(self, method: str, url: str, *, service: str,
                      json_body: Mapping[str, Any] | None, timeout: float,
                      headers: Mapping[str, str], log: logging.LoggerAdapter | None,
                      lost_on_404: bool = False,
                      expect_json: bool = True) -> tuple[int, Any, float | None]:
        log = log or logs.WorkflowLogger(logger, {})
        context = {"service": service, "url": url, "method": method}
        status, raw, retry_after = self._exchange(method, url, service, json_body, timeout,
                                                  headers, log, context)
        body = logs.clip(raw, defaults.ERROR_BODY_CHARS)
        value, deep = _parse_json(raw) if raw else (None, False)
        payload = None if deep else value
        answered = isinstance(payload, dict) and "status" in payload
        if status in TRANSIENT_STATUS or (status >= 500 and not answered):
            _log_failure(log, "agent answered with a transient error", context, status, body)
            raise errors.AgentUnavailable(
                f"{service} answered HTTP {status}", service=service, status_code=status,
                body=body, url=url, retry_after=retry_after)
        if 400 <= status < 500 and status != 409 and not (status == 404 and lost_on_404):
            _log_failure(log, "agent rejected the request", context, status, body)
            raise errors.AgentRejected(
                f"{service} rejected the request with HTTP {status}: {body}", service=service,
                status_code=status, body=body, url=url)
        if 300 <= status < 400:
            raise errors.AgentRejected(f"{service} answered with a redirect (HTTP {status})",
                                       service=service, status_code=status, url=url)
        if expect_json and status not in (404, 409) and not isinstance(payload, dict):
            _log_failure(log, "agent reply is not a JSON object", context, status, body)
            got = (f"nested deeper than {MAX_JSON_DEPTH} levels" if deep
                   else f"got {body[:80]!r}")
            raise errors.InvalidAgentResult(
                f"{service} reply: expected a JSON object, {got}",
                service=service, field="body", status_code=status, url=url)
        return status, payload, retry_after

    def _exchange(self, method: str, url: str, service: str,
                  json_body: Mapping[str, Any] | None, timeout: float,
                  headers: Mapping[str, str], log: logging.LoggerAdapter,
                  context: Mapping[str, object]) -> tuple[int, bytes, float | None]:
        """Sends the request and reads the whole (bounded) answer: status, body, Retry-After.

        ``timeout`` bounds the whole exchange (connect, send, headers and whole body), not only
        each socket operation: a trickling answer cannot hold the step for longer.
        """
        with deadline.guard(timeout) as cut_off:
            try:
                with self.session.request(method, url, json=json_body, headers=headers,
                                          timeout=timeout, stream=True,
                                          allow_redirects=False) as response:
                    status = response.status_code
                    # An oversized error page of a transient failure is still transient.
                    transient = status in TRANSIENT_STATUS or status >= 500
                    raw = _read_bounded(response, self.settings.max_response_bytes, service,
                                        url, truncate=transient)
                    return status, raw, _retry_after(response.headers.get("Retry-After"))
            except (requests.RequestException, OSError) as exc:
                failure = exc
        raise _no_answer(failure, cut_off.expired, service, url, timeout, log,
                         context) from failure

    def _wait_times(self) -> Generator[float, Any, None]:
        """factor * 2**n between attempts, or the agent's Retry-After when it sent one."""
        n = 0
        exc = yield  # type: ignore[misc]
        while True:
            retry_after = getattr(exc, "retry_after", None)
            exc = yield (retry_after if retry_after is not None
                         else self.settings.retry_backoff_factor * 2 ** n)
            n += 1

    # -- reading replies --------------------------------------------------------------------

    def _accepted(self, service: str, base_url: str, payload: dict, status: int) -> Reply:
        task_id = _required_text(payload, "task_id", service)
        status_url = _required_text(payload, "status_url", service)
        return Reply("accepted", task_id, _absolute(base_url, status_url, service), None, status)

    def _busy(self, service: str, base_url: str, payload: Any, status: int) -> Reply:
        payload = payload if isinstance(payload, dict) else {}
        task_id = payload.get("task_id") if isinstance(payload.get("task_id"), str) else None
        url = payload.get("status_url") if isinstance(payload.get("status_url"), str) else None
        return Reply("busy", task_id, _absolute(base_url, url, service) if url else None,
                     None, status)

    def _task_reply(self, service: str, base_url: str, payload: dict, status: int,
                    url: str) -> Reply:
        task_status = payload.get("status")
        task_id = payload.get("task_id") if isinstance(payload.get("task_id"), str) else None
        if not isinstance(task_status, str):
            got = "missing" if task_status is None else type(task_status).__name__
            raise errors.InvalidAgentResult(
                f"{service} reply: field 'status' must be a string ({got})", service=service,
                field="status", status_code=status, url=url)
        if task_status == "SUCCESS":
            if "result" not in payload:
                raise errors.InvalidAgentResult(f"{service} reply: missing field 'result'",
                                                service=service, field="result", url=url)
            return Reply("done", task_id, None, payload["result"], status)
        if task_status == "FAILURE":
            detail = logs.clip(_describe_error(payload.get("error")), defaults.ERROR_BODY_CHARS)
            raise errors.AgentTaskFailed(f"{service} task failed: {detail}", service=service,
                                         status_code=status, body=detail, url=url)
        if task_status in PENDING_STATUSES:
            status_url = payload.get("status_url")
            absolute = (_absolute(base_url, status_url, service)
                        if isinstance(status_url, str) else None)
            return Reply("pending", task_id, absolute, None, status,
                         progress=payload.get("progress"), partial=payload.get("partial"))
        raise errors.InvalidAgentResult(
            f"{service} reply: field 'status' has unknown value {logs.clip(str(task_status), 80)!r}",
            service=service, field="status", status_code=status, url=url)


def _no_answer(exc: Exception, expired: bool, service: str, url: str, timeout: float,
               log: logging.LoggerAdapter, context: Mapping[str, object]) -> errors.AgentError:
    """The CPOA error for a request that got no complete answer (logged here)."""
    if expired or isinstance(exc, requests.Timeout):
        _log_failure(log, "agent request timed out", context, None, "")
        return errors.AgentTimeout(f"{service} did not answer within {timeout:g} s",
                                   service=service, url=url)
    _log_failure(log, "agent request failed", context, None, str(exc))
    return errors.AgentUnavailable(f"{service} unreachable: {type(exc).__name__}",
                                   service=service, url=url)


def _headers(idempotency_key: str, workflow_id: str) -> dict[str, str]:
    return {"X-Idempotency-Key": idempotency_key, "X-Workflow-ID": workflow_id,
            "Content-Type": "application/json", "Accept": "application/json"}


def _read_bounded(response: requests.Response, limit: int, service: str, url: str, *,
                  truncate: bool = False) -> bytes:
    """Reads at most ``limit`` bytes of a body; a longer one is a protocol violation, or with
    ``truncate`` is cut (and then no longer parses as JSON)."""
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit and not truncate:
        raise errors.InvalidAgentResult(
            f"{service} reply: body of {declared} bytes exceeds the {limit}-byte limit",
            service=service, field="body", status_code=response.status_code, url=url)
    chunks, size = [], 0
    for chunk in response.iter_content(chunk_size=65536):
        size += len(chunk)
        if size > limit and truncate:
            chunks.append(chunk[:limit - size + len(chunk)])
            return b"".join(chunks) + b"\x00"  # cut: never valid JSON
        if size > limit:
            raise errors.InvalidAgentResult(
                f"{service} reply: body exceeds the {limit}-byte limit", service=service,
                field="body", status_code=response.status_code, url=url)
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_json(raw: bytes) -> tuple[Any, bool]:
    """The body as JSON (None when it is not JSON), and whether it nests deeper than
    MAX_JSON_DEPTH. json.loads' own recursion limit counts as deeper: where it is hit depends
    on how deep the caller's stack already is, and the reason must not."""
    try:
        value = json.loads(raw)
    except RecursionError:
        return None, True
    except ValueError:
        return None, False
    return value, value is not None and _deeper_than(value, MAX_JSON_DEPTH)


def _deeper_than(value: Any, limit: int) -> bool:
    """Iteratively (no recursion limit to hit): is any container nested deeper than limit?"""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


def _retry_after(value: str | None) -> float | None:
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to the exponential schedule
    if seconds is None or not math.isfinite(seconds):
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER_S)


def _wait_is_too_long(exc: Exception) -> bool:
    retry_after = getattr(exc, "retry_after", None)
    return retry_after is not None and retry_after > defaults.MAX_INLINE_RETRY_AFTER_S


def _required_text(payload: Mapping[str, Any], field: str, service: str) -> str:
    value = payload.get(field)
    if not isinstance(value, str) or not value:
        got = "missing" if value is None else f"got {type(value).__name__}"
        raise errors.InvalidAgentResult(
            f"{service} reply: field {field!r} must be a non-empty string ({got})",
            service=service, field=field)
    return value


def _absolute(base_url: str, status_url: str, service: str) -> str:
    url = urllib.parse.urljoin(base_url.rstrip("/") + "/", status_url)
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise errors.InvalidAgentResult(
            f"{service} reply: field 'status_url' is not an http(s) URL", service=service,
            field="status_url")
    return url


def _describe_error(error: Any) -> str:
    if isinstance(error, Mapping):
        message = error.get("message") or error.get("error") or json.dumps(error)[:200]
        code = error.get("error_code")
        return f"{message} ({code})" if code else str(message)
    return str(error) if error else "no error detail"


def _log_failure(log: logging.LoggerAdapter, message: str, context: Mapping[str, object],
                 status: int | None, body: str) -> None:
    log.warning(message, extra={"action": "agent_call_failed", **context,
                                "status_code": status, "body": body})


def _log_backoff(details: Mapping[str, Any]) -> None:
    logger.info("retrying agent request in %.2f s (attempt %d)", details["wait"],
                details["tries"], extra={"action": "agent_retry",
                                         "url": details["args"][1] if details["args"] else None})


def is_transient(exc: BaseException) -> bool:
    """True for failures that a later attempt may not see (the step is tried again)."""
    return isinstance(exc, errors.AgentUnavailable)

