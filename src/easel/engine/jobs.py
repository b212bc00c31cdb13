"""Jobs: every request the server runs, with its state recorded in the database so that it survives a crash."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

from ..errors import GenerationError
from ..request_json import to_json
from ..store import History, now_iso
from ..types import ImageRequest, ImageResult

FINAL = ("succeeded", "failed", "cancelled")


def _iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).isoformat(timespec="milliseconds")


def request_to_json(r: ImageRequest) -> str:
    """What is kept of a request in the job record: every field but its images (inputs, not results)."""
    return json.dumps(to_json(r, images="none")[0])  # ASCII: text that is not valid Unicode can never fail the write


@dataclasses.dataclass(frozen=True)
class JobEvent:
    """One moment of a job: its JSON then (the shape of `Job.snapshot`), and at the steps a listener asked for, this
    job's images at that step. The last event of every job is `final`. Events are shared by a job's listeners."""

    body: dict[str, Any]
    previews: tuple = ()

    @property
    def status(self) -> str:
        return self.body["status"]

    @property
    def step(self) -> int:
        return self.body["step"]

    @property
    def total_steps(self) -> int:
        return self.body["total_steps"]

    @property
    def final(self) -> bool:
        return self.status in FINAL


@dataclasses.dataclass
class Job:
    """One request on its way through the engine: followed with `follow()`, awaited with `wait()` or
    `wait_async()`, and released from memory a while after it finished (its record stays)."""

    request: ImageRequest  # checked: concrete values only
    spec: Any = None  # the request's model (ModelSpec)
    id: str = dataclasses.field(default_factory=lambda: f"job_{uuid.uuid4().hex}")
    state: str = "queued"
    step: int = 0
    total_steps: int = 0
    result: ImageResult | None = None
    error: Any = None
    created: float = dataclasses.field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    cancel_requested: threading.Event = dataclasses.field(default_factory=threading.Event)
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    listeners: list = dataclasses.field(default_factory=list)  # queue.Queue or _LoopListener: has put(event)
    preview_steps: set[int] = dataclasses.field(default_factory=set)  # steps whose images someone wants
    preview_all: bool = False  # previews of every image of the job, not only its first
    preview: list | None = None  # the latest preview images, while the job runs
    queue_position: int | None = None  # queued: how many jobs run before it (0: it is next)
    eta_s: float | None = None  # queued or running: seconds until it finishes, from the engine's recent pace
    webhook: dict[str, Any] | None = None  # where its final JSON is POSTed, and how that went (server.webhooks)
    done_callbacks: list = dataclasses.field(default_factory=list)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    _reserved: queue.Queue | None = None  # the submitter's listener, subscribed before the job could start

    # -- following -------------------------------------------------------------------------------------------------
    def preview_every(self, k: int, every_image: bool = False) -> None:
        """Ask for a preview at every k-th step (the final step brings the image itself): of the job's first image,
        or with `every_image` of each of them."""
        self.preview_steps |= set(range(k, max(self.total_steps, 1), k))
        self.preview_all = self.preview_all or every_image

    def reserve_listener(self) -> None:
        """Subscribe now, for the first `follow()` (the engine calls this before queueing, so nothing is missed)."""
        self._reserved = self._subscribe()

    @contextlib.contextmanager
    def follow(self) -> Iterator[Iterator[JobEvent]]:
        """The job's events, from its state now to its final event; the listener goes when the block is left
        (its reader finished, failed or went away).

        >>> with job.follow() as events:
        ...     for event in events:
        ...         print(event.step, event.total_steps)
        """
        q = self._listener()
        try:
            yield _until_final(q)
        finally:
            self._unsubscribe(q)

    @contextlib.asynccontextmanager
    async def follow_async(self) -> AsyncIterator[AsyncIterator[JobEvent]]:
        """`follow()` for a coroutine: the job's events, awaited on its event loop without holding a thread."""
        listener = _LoopListener(asyncio.get_running_loop())
        with self.lock:  # the reserved listener's events first, then the new one's, none lost between
            reserved, self._reserved = self._reserved, None
            if reserved is not None:
                self.listeners.remove(reserved)
                while not reserved.empty():
                    listener.events.put_nowait(reserved.get_nowait())
            else:
                listener.events.put_nowait(JobEvent(self.snapshot()))
            self.listeners.append(listener)

        async def events() -> AsyncIterator[JobEvent]:
            while True:
                event = await listener.events.get()
                yield event
                if event.final:
                    return

        try:
            yield events()
        finally:
            self._unsubscribe(listener)

    def _listener(self) -> queue.Queue:
        """The reserved listener, or a new one."""
        with self.lock:
            q, self._reserved = self._reserved, None
        return q or self._subscribe()

    def _unsubscribe(self, q) -> None:
        with self.lock:
            if q in self.listeners:
                self.listeners.remove(q)

    def _subscribe(self) -> queue.Queue:
        q: queue.Queue = queue.Queue()
        with self.lock:
            self.listeners.append(q)
            q.put(JobEvent(self.snapshot()))
        return q

    def publish(self, event: JobEvent) -> None:
        with self.lock:
            for q in self.listeners:
                q.put(event)

    # -- waiting ---------------------------------------------------------------------------------------------------
    def add_done_callback(self, fn: Callable[[], None]) -> None:
        """Call `fn()` once the job is final (at once if it already is)."""
        with self.lock:
            if not self.done.is_set():
                self.done_callbacks.append(fn)
                return
        fn()

    def outcome(self) -> ImageResult:
        """The finished job's result, or its error raised (`JobCancelledError` when it was cancelled)."""
        if self.state == "succeeded" and self.result is not None:
            return self.result
        raise self.error if self.error is not None else GenerationError(f"Job {self.id} is {self.state}.")

    def wait(self, timeout: float | None = None) -> ImageResult:
        """Block until the job is final; its result, or its error raised. Past `timeout`, a TimeoutError."""
        if not self.done.wait(timeout):
            raise TimeoutError(f"Job {self.id} is still {self.state} after {timeout} s.")
        return self.outcome()

    async def wait_async(self, on_poll: Callable[[Job], Awaitable[None]] | None = None,
                         poll_s: float = 0.5) -> ImageResult:
        """`wait` without holding a thread; `on_poll(job)` runs every `poll_s` while it waits (to report progress,
        or to cancel the job when its client went away)."""
        loop = asyncio.get_running_loop()
        finished = asyncio.Event()
        self.add_done_callback(lambda: loop.call_soon_threadsafe(finished.set))
        while not finished.is_set():
            try:
                await asyncio.wait_for(finished.wait(), poll_s)
            except asyncio.TimeoutError:
                if on_poll is not None:
                    await on_poll(self)
        return self.outcome()

    def snapshot(self) -> dict[str, Any]:
        """The job's JSON; the same shape as `JobStore.describe` gives for its record once it left memory."""
        error = self.error.to_dict() if hasattr(self.error, "to_dict") else (
            {"message": str(self.error)} if self.error is not None else None)
        body = job_json(self.id, self.state, self.step, self.total_steps, int(self.created),
                        [im.id for im in self.result.images] if self.result else [],
                        list(self.result.warnings) if self.result else [], error)
        if self.state not in FINAL:
            body["queue_position"] = self.queue_position
            body["eta_s"] = None if self.eta_s is None else round(self.eta_s, 1)
        if self.webhook is not None:
            body["webhook"] = dict(self.webhook)
        return body


class _LoopListener:
    """A listener on an event loop: `publish` (from any thread) hands each event to the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.events: asyncio.Queue[JobEvent] = asyncio.Queue()

    def put(self, event: JobEvent) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # its loop is closed: nobody is listening any more
            pass


def _until_final(q: queue.Queue) -> Iterator[JobEvent]:
    while True:
        event = q.get()
        yield event
        if event.final:
            return


def job_json(job_id: str, state: str, step: int, total_steps: int, created: int, image_ids: list[str],
             warnings: list[str], error: dict | None) -> dict[str, Any]:
    """One job as the jobs API shows it, live or recorded."""
    body: dict[str, Any] = {"id": job_id, "object": "job", "status": state, "step": step,
                            "total_steps": total_steps, "created": created, "image_ids": image_ids,
                            "warnings": warnings}
    if error is not None:
        body["error"] = error
    return body


class JobStore:
    """The `jobs` table, and the `engines` that own its unfinished jobs. Several engines (a cluster's ingress
    replicas) may share one database: each keeps a lease by touching its `engines` row, takes cancellations asked
    for through another, and fails the unfinished jobs of an engine whose lease ran out (or, on the same host, whose
    process is gone): their inputs went with it."""

    def __init__(self, history: History, lease_s: float = 15.0):
        self.db = history.db
        self.host = socket.gethostname()
        self.owner = f"{self.host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lease_s = lease_s

    def insert(self, job: Job) -> None:
        self.db.execute(
            "INSERT INTO jobs (id, created, updated, state, step, total_steps, request, owner)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (job.id, _iso(job.created), now_iso(), job.state, job.step, job.total_steps,
             request_to_json(job.request), self.owner))

    def update(self, job: Job) -> None:
        body = job.snapshot()
        self.db.execute(  # a finished job's preview goes: its images are there
            "UPDATE jobs SET updated = ?, state = ?, step = ?, total_steps = ?, image_ids = ?, warnings = ?, "
            f"error = ?{', preview = NULL' if job.state in FINAL else ''} WHERE id = ?",
            (now_iso(), job.state, job.step, job.total_steps, json.dumps(body["image_ids"]),
             json.dumps(body["warnings"]), json.dumps(body["error"]) if "error" in body else None, job.id))

    def set_webhook(self, job: Job) -> None:
        """The job's webhook delivery as it stands (its URL, attempts, outcome)."""
        self.db.execute("UPDATE jobs SET webhook = ? WHERE id = ?", (json.dumps(job.webhook), job.id))

    @staticmethod
    def describe(row: dict[str, Any]) -> dict[str, Any]:
        """A recorded job in the shape of `Job.snapshot`."""
        created = int(dt.datetime.fromisoformat(row["created"]).timestamp())
        body = job_json(row["id"], row["state"], row["step"], row["total_steps"], created,
                        json.loads(row["image_ids"] or "[]"), json.loads(row.get("warnings") or "[]"),
                        json.loads(row["error"]) if row["error"] else None)
        if row.get("webhook"):
            body["webhook"] = json.loads(row["webhook"])
        return body

    def get(self, job_id: str) -> dict[str, Any] | None:
        return self.db.query_one("SELECT * FROM jobs WHERE id = ?", (job_id,))

    def recent(self, limit: int = 20) -> list[dict[str, Any]]:
        return self.db.query("SELECT * FROM jobs ORDER BY created DESC LIMIT ?", (limit,))

    def follow(self, job_id: str, poll_s: float = 0.25,
               timeout_s: float = 3600.0) -> Iterator[tuple[dict[str, Any], bytes | None]]:
        """A job that another engine runs, as its record changes: its JSON at each new state or step, with the PNG of
        its latest preview when that is new (on a shared database), until final (or gone, or past `timeout_s`)."""
        last, shown, deadline = None, None, time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            row = self.get(job_id)
            if row is None:
                return
            body = self.describe(row)
            preview = bytes(row["preview"]) if row.get("preview") else None
            if (body["status"], body["step"]) != last or preview != shown:
                last = (body["status"], body["step"])
                yield body, preview if preview != shown and body["status"] not in FINAL else None
                shown = preview
            if body["status"] in FINAL:
                return
            time.sleep(poll_s)

    def share_preview(self, job: Job, image) -> None:
        """On a database that several servers share, a running job's latest preview, for clients that follow the
        job through another server."""
        if self.db.shared:
            from ..metadata import encode_image

            self.db.execute("UPDATE jobs SET preview = ? WHERE id = ?", (encode_image(image, "png", {}), job.id))

    # -- several engines on one database ---------------------------------------------------------------------------
    def request_cancel(self, job_id: str) -> bool:
        """Ask the engine running an unfinished job to cancel it; False if the job is final (or unknown)."""
        return self.db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND state IN ('queued', 'running')",
                               (job_id,)) > 0

    def cancel_requests(self) -> list[str]:
        """This engine's unfinished jobs that a client asked another engine to cancel."""
        rows = self.db.query("SELECT id FROM jobs WHERE owner = ? AND cancel_requested = 1 AND state IN "
                             "('queued', 'running')", (self.owner,))
        return [r["id"] for r in rows]

    def renew_lease(self) -> None:
        self.db.execute("INSERT INTO engines (id, host, pid, seen) VALUES (?, ?, ?, ?) ON CONFLICT (id) DO UPDATE "
                        "SET seen = excluded.seen", (self.owner, self.host, os.getpid(), time.time()))

    def fail_orphaned(self, reason: str) -> int:
        """Fail the unfinished jobs whose engine is gone (this engine's own stay); the number failed."""
        now = time.time()
        live = {self.owner} | {r["id"] for r in self.db.query("SELECT id, host, pid FROM engines WHERE seen >= ?",
                                                              (now - self.lease_s,))
                               if r["host"] != self.host or _process_alive(r["pid"])}
        self.db.execute("DELETE FROM engines WHERE seen < ?", (now - 24 * 3600,))
        error = json.dumps({"message": reason, "type": "server_error", "param": None, "code": "server_restarted"})
        marks = ", ".join("?" for _ in live)
        return self.db.execute(
            "UPDATE jobs SET state = 'failed', error = ?, updated = ? WHERE state IN ('queued', 'running') AND "
            f"(owner IS NULL OR owner NOT IN ({marks}))", (error, now_iso(), *live))


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # alive, another user's
        return True
    return True
