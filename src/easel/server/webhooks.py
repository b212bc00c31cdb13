"""Webhooks: a job may name a URL that hears its end. When the job is final, its JSON (with signed links to its
images) is POSTed there, signed, and tried again with growing pauses until the receiver answers 2xx or the attempts
run out; each attempt is recorded in the job (`webhook`: url, status, attempts, last_status, error).

The signature is HMAC-SHA256 with the server's webhook secret (EASEL_WEBHOOK_SECRET, else one created once in
HOME/webhook_secret) over `"{timestamp}.{body}"`, sent as `X-Easel-Signature: sha256=<hex>` beside
`X-Easel-Timestamp` and `X-Easel-Job`; a receiver recomputes it and refuses old timestamps. A URL whose host is (or
resolves to) a loopback, private, link-local or otherwise non-public address is refused unless the operator allows
them (EASEL_WEBHOOK_ALLOW_PRIVATE), at submission and again at each attempt."""

from __future__ import annotations

import concurrent.futures
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from .._version import __version__
from ..engine.jobs import Job, JobStore
from ..errors import InvalidRequestError

log = logging.getLogger(__name__)
MAX_URL = 2000


def host_problem(url: str, allow_private: bool) -> str | None:
    """Why `url` may not be called back (None: it may): not http(s), no host, or a host that is or resolves to an
    address outside the public internet (unless `allow_private`)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "it must be an http or https URL with a host"
    if allow_private:
        return None
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(parts.hostname, parts.port or 80,
                                                               type=socket.SOCK_STREAM)}
    except (OSError, UnicodeError):
        return f"its host {parts.hostname!r} does not resolve"
    for address in addresses:
        if not ipaddress.ip_address(address.split("%", 1)[0]).is_global:
            return (f"its host {parts.hostname!r} is at {address}, not a public address (the operator may allow "
                    "those: EASEL_WEBHOOK_ALLOW_PRIVATE=1)")
    return None


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


class Webhooks:
    """Delivers jobs' final JSON to the URLs they named, beside the engine (a slow or dead receiver never holds a
    job, the worker or a request)."""

    def __init__(self, secret: bytes, store: JobStore, allow_private: bool = False, attempts: int = 5,
                 first_pause_s: float = 1.0, timeout_s: float = 10.0):
        self.secret, self.store, self.allow_private = secret, store, allow_private
        self.attempts, self.first_pause_s, self.timeout_s = attempts, first_pause_s, timeout_s
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="easel-webhook")
        self._stopping = threading.Event()

    def check(self, url: Any, param: str = "webhook") -> str:
        """The URL, or a client's error naming `param` and why it may not be called back."""
        if not isinstance(url, str) or len(url) > MAX_URL:
            raise InvalidRequestError(f"`{param}` must be a URL of at most {MAX_URL} characters.", param=param)
        problem = host_problem(url, self.allow_private)
        if problem:
            raise InvalidRequestError(f"`{param}` {url!r} cannot be called back: {problem}.", param=param)
        return url

    def watch(self, job: Job, url: str, final_json: Callable[[Job], dict[str, Any]]) -> None:
        """Deliver `final_json(job)` to `url` once the job is final."""
        job.webhook = {"url": url, "status": "pending", "attempts": 0}
        self._record(job)
        job.add_done_callback(lambda: self._pool.submit(self._deliver, job, url, final_json))

    def stop(self) -> None:
        self._stopping.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _deliver(self, job: Job, url: str, final_json: Callable[[Job], dict[str, Any]]) -> None:
        import httpx

        body = json.dumps(final_json(job)).encode()
        pause = self.first_pause_s
        for attempt in range(1, self.attempts + 1):
            status, error = None, host_problem(url, self.allow_private)
            if error is None:
                stamp = str(int(time.time()))
                try:
                    answer = httpx.post(url, content=body, timeout=self.timeout_s, follow_redirects=False, headers={
                        "content-type": "application/json", "user-agent": f"easel/{__version__}",
                        "x-easel-job": job.id, "x-easel-timestamp": stamp,
                        "x-easel-signature": signature(self.secret, stamp, body)})
                    status = answer.status_code
                    error = None if 200 <= status < 300 else f"the receiver answered {status}"
                except httpx.HTTPError as exc:
                    error = f"{type(exc).__name__}: {exc}"[:300]
            done = error is None
            job.webhook = {"url": url, "status": "delivered" if done else "pending" if attempt < self.attempts
                           else "failed", "attempts": attempt, "last_status": status, "error": error,
                           **({"delivered_at": int(time.time())} if done else {})}
            self._record(job)
            if done or attempt == self.attempts or self._stopping.wait(pause):
                return
            pause *= 2

    def _record(self, job: Job) -> None:
        try:
            self.store.set_webhook(job)
        except Exception as exc:  # noqa: BLE001 - the record catches up at the next attempt; delivery goes on
            log.warning("webhook of job %s: its record could not be written: %s", job.id, exc)
