"""Jobs: every request the server runs, with its state recorded in SQLite so that it survives a crash."""

from __future__ import annotations

import dataclasses
import json
import queue
import threading
import time
import uuid
from typing import Any

from ..store import History, now_iso
from ..types import ImageRequest, ImageResult

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL = ("succeeded", "failed", "cancelled")


def request_to_json(r: ImageRequest) -> str:
    """What is kept of a request in the job record (images are not: they are inputs, not results)."""
    fields = {k: v for k, v in dataclasses.asdict(r).items() if k not in ("image", "mask")}
    return json.dumps(fields)  # ASCII: text that is not valid Unicode can never fail the write


@dataclasses.dataclass
class Job:
    """One request on its way through the engine."""

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
    preview_steps: set[int] = dataclasses.field(default_factory=set)  # steps whose images a listener wants
    events: queue.Queue | None = None  # the submitter's own listener, when it asked for one
    done_callbacks: list = dataclasses.field(default_factory=list)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def add_done_callback(self, fn) -> None:
        """Call `fn()` once the job is final (at once if it already is)."""
        with self.lock:
            if not self.done.is_set():
                self.done_callbacks.append(fn)
                return
        fn()

    def preview_every(self, k: int) -> None:
        """Ask for a preview image at every k-th step (the final step brings the image itself)."""
        self.preview_steps |= set(range(k, max(self.total_steps, 1), k))

    def publish(self, event: dict[str, Any]) -> None:
        with self.lock:
            for q in self.listeners:
                q.put(event)

    def subscribe(self) -> queue.Queue:
        q: queue.Queue = queue.Queue()
        with self.lock:
            self.listeners.append(q)
            q.put(self.snapshot())
            if self.state in FINAL:
                q.put(None)
        return q

    def snapshot(self) -> dict[str, Any]:
        body: dict[str, Any] = {"id": self.id, "object": "job", "status": self.state, "step": self.step,
                                "total_steps": self.total_steps, "created": int(self.created)}
        if self.result is not None:
            body["image_ids"] = [im.id for im in self.result.images]
            body["warnings"] = self.result.warnings
        if self.error is not None:
            body["error"] = self.error.to_dict() if hasattr(self.error, "to_dict") else {"message": str(self.error)}
        return body


class JobStore:
    """The `jobs` table of the history database."""

    def __init__(self, history: History):
        self.history = history

    def insert(self, job: Job) -> None:
        self.history.connect().execute(
            "INSERT INTO jobs (id, created, updated, state, step, total_steps, request) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (job.id, now_iso(), now_iso(), job.state, job.step, job.total_steps, request_to_json(job.request)))

    def update(self, job: Job) -> None:
        image_ids = [im.id for im in job.result.images] if job.result else []
        error = job.error.to_dict() if hasattr(job.error, "to_dict") else (str(job.error) if job.error else None)
        self.history.connect().execute(
            "UPDATE jobs SET updated = ?, state = ?, step = ?, total_steps = ?, image_ids = ?, error = ? "
            "WHERE id = ?",
            (now_iso(), job.state, job.step, job.total_steps, json.dumps(image_ids),
             json.dumps(error) if error else None, job.id))

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
