"""Jobs: every request the server runs, with its state recorded in SQLite so that it survives a crash."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import queue
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from ..errors import GenerationError
from ..store import History, now_iso
from ..types import ImageRequest, ImageResult

FINAL = ("succeeded", "failed", "cancelled")


def _iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).isoformat(timespec="milliseconds")


def request_to_json(r: ImageRequest) -> str:
    """What is kept of a request in the job record (images are not: they are inputs, not results)."""
    fields = {k: v for k, v in dataclasses.asdict(r).items() if k not in ("image", "mask")}
    return json.dumps(fields)  # ASCII: text that is not valid Unicode can never fail the write


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
    listeners: list[queue.Queue] = dataclasses.field(default_factory=list)
    preview_steps: set[int] = dataclasses.field(default_factory=set)  # steps whose images someone wants
    preview_all: bool = False  # previews of every image of the job, not only its first
    preview: list | None = None  # the latest preview images, while the job runs
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
        with self.lock:
            q, self._reserved = self._reserved, None
        q = q or self._subscribe()
        try:
            yield _until_final(q)
        finally:
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
        return job_json(self.id, self.state, self.step, self.total_steps, int(self.created),
                        [im.id for im in self.result.images] if self.result else [],
                        list(self.result.warnings) if self.result else [], error)


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
    """The `jobs` table of the history database."""

    def __init__(self, history: History):
        self.history = history

    def insert(self, job: Job) -> None:
        self.history.connect().execute(
            "INSERT INTO jobs (id, created, updated, state, step, total_steps, request) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (job.id, _iso(job.created), now_iso(), job.state, job.step, job.total_steps,
             request_to_json(job.request)))

    def update(self, job: Job) -> None:
        body = job.snapshot()
        self.history.connect().execute(
            "UPDATE jobs SET updated = ?, state = ?, step = ?, total_steps = ?, image_ids = ?, warnings = ?, "
            "error = ? WHERE id = ?",
            (now_iso(), job.state, job.step, job.total_steps, json.dumps(body["image_ids"]),
             json.dumps(body["warnings"]), json.dumps(body["error"]) if "error" in body else None, job.id))

    @staticmethod
    def describe(row: dict[str, Any]) -> dict[str, Any]:
        """A recorded job in the shape of `Job.snapshot`."""
        created = int(dt.datetime.fromisoformat(row["created"]).timestamp())
        return job_json(row["id"], row["state"], row["step"], row["total_steps"], created,
                        json.loads(row["image_ids"] or "[]"), json.loads(row.get("warnings") or "[]"),
                        json.loads(row["error"]) if row["error"] else None)

    def get(self, job_id: str) -> dict[str, Any] | None:
        row = self.history.connect().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return dict(row) if row else None

    def recent(self, limit: int = 20) -> list[dict[str, Any]]:
        rows = self.history.connect().execute("SELECT * FROM jobs ORDER BY created DESC LIMIT ?", (limit,))
        return [dict(r) for r in rows]

    def fail_unfinished(self, reason: str) -> int:
        """Jobs left queued or running by a crash: their request's inputs are gone with the process, so they are
        marked failed (not re-run) and their callers, who waited on the lost connection, are told why."""
        error = json.dumps({"message": reason, "type": "server_error", "param": None, "code": "server_restarted"})
        cur = self.history.connect().execute(
            "UPDATE jobs SET state = 'failed', error = ?, updated = ? WHERE state IN ('queued', 'running')",
            (error, now_iso()))
        return cur.rowcount
