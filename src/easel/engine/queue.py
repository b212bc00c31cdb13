"""The engine: a bounded queue of jobs and one worker per device that runs compatible jobs as one batch."""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import shutil
import threading
import time
from typing import Any

from ..checks import CheckedRequest
from ..errors import (EaselError, GenerationError, InsufficientStorageError, JobCancelledError, NotFoundError,
                      RateLimitError)
from ..store import is_disk_full, now_iso, out_of_space, storage_errors
from ..types import ImageRequest
from .jobs import FINAL, Job, JobEvent, JobStore
from .metrics import EngineMetrics
from .runner import Runner, batch_key, steps_of

log = logging.getLogger("easel.engine")
ORPHANED = "The server stopped before this job finished; send it again."


class Engine:
    """Queue -> batches -> the runner. Jobs are recorded in the database; each can be followed and cancelled alone.

    A queued job that is cancelled leaves the queue. A running job that is cancelled is finished as cancelled at
    the next denoising step: alone (or with every batch-mate cancelled) the pipeline is interrupted there; in a
    batch its batch-mates run on unaffected and its share of the batch is dropped, unsaved.

    The worker never dies: whatever a batch raises (the model, a full disk, the history) fails that batch's jobs
    and is kept as `last_error`, and the worker takes the next batch. A job whose state cannot be written to the
    history (a full disk) still finishes in memory, and its record is written once writing works again.
    Finished jobs stay in `jobs` for `keep_finished_s`, then only their record and image files remain.
    """

    def __init__(self, runner: Runner, *, max_queue: int = 32, max_batch_images: int = 8,
                 batch_wait_s: float = 0.02, job_timeout_s: float = 600.0, keep_finished_s: float = 60.0,
                 min_free_bytes: int = 0, idle_unload_s: float = 0.0, metrics: EngineMetrics | None = None):
        self.runner = runner
        self.max_queue = max_queue
        self.max_batch_images = max_batch_images
        self.batch_wait_s = batch_wait_s
        self.job_timeout_s = job_timeout_s
        self.keep_finished_s = keep_finished_s
        self.min_free_bytes = min_free_bytes
        self.idle_unload_s = idle_unload_s
        self.models_released_at: str | None = None  # when an idle spell released the loaded models
        self._last_busy = time.monotonic()
        self.metrics = metrics or EngineMetrics()
        self.workspace = runner.workspace()
        self.store = JobStore(self.workspace.history)
        self.jobs: dict[str, Job] = {}
        self.last_error: dict[str, Any] | None = None
        self._pending: list[Job] = []
        self._running: list[Job] = []
        self._step_s: float | None = None  # the recent pace: seconds per denoising step (a moving average)
        self._keys: dict[str, tuple] = {}
        self._finished: collections.deque[Job] = collections.deque()
        self._unsynced: dict[str, Job] = {}  # finished jobs whose record could not be written yet
        self._cond = threading.Condition()
        self._stop = False
        self.store.renew_lease()
        self.recovered = self.store.fail_orphaned(ORPHANED)
        self._thread = threading.Thread(target=self._work, name="easel-engine-worker", daemon=True)
        self._lease = threading.Thread(target=self._keep_lease, name="easel-engine-lease", daemon=True)
        # encoding and saving run beside the worker, so that it takes the next batch while the last one is saved;
        # one saver keeps the jobs' order and its resources fixed (a PNG encodes in a fraction of a batch's time)
        self._savers = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="easel-save")
        # a chat model's rewrite of a prompt runs beside the worker (the network, never the model's time); a job is
        # queued when its rewrite is done, failed or timed out
        self._enhancers = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="easel-enhance")
        self._enhancing = 0
        self._record_lock = threading.Lock()

    @classmethod
    def from_settings(cls, runner: Runner, **options: Any) -> Engine:
        """The engine as the runner's settings configure it: the one factory of the server, the UI and MCP
        (`options` go to a subclass's own parameters)."""
        s = runner.settings
        return cls(runner, max_queue=s.max_queue, max_batch_images=s.max_batch_images,
                   batch_wait_s=s.batch_wait_ms / 1000, job_timeout_s=s.job_timeout_s,
                   keep_finished_s=s.keep_finished_s, min_free_bytes=int(s.min_free_disk_mb * 2**20),
                   idle_unload_s=s.idle_unload_s, **options)

    # -- lifecycle -------------------------------------------------------------------------------------------------
    def start(self) -> Engine:
        self._thread.start()
        self._lease.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread.ident is not None:  # started
            self._thread.join(timeout=10)
            self._lease.join(timeout=5)
        self._savers.shutdown(wait=True)
        self._enhancers.shutdown(wait=False, cancel_futures=True)

    @property
    def queue_depth(self) -> int:
        with self._cond:
            return self._waiting()

    @property
    def worker_alive(self) -> bool:
        return self._thread.is_alive()

    def free_bytes(self) -> int | None:
        try:
            return shutil.disk_usage(self.workspace.home).free
        except OSError:
            return None

    def _space_problem(self, free: int | None) -> str | None:
        if free is None or free >= self.min_free_bytes:
            return None
        return (f"the workspace {self.workspace.home} has {free // 2**20} MiB free, under the "
                f"{self.min_free_bytes // 2**20} MiB needed to save images")

    def health(self) -> dict[str, Any]:
        """The engine's real state: whether it can work now, and if not, why."""
        free = self.free_bytes()
        problems = [] if self.worker_alive else ["the engine's worker is not running"]
        problems += [p for p in [self._space_problem(free)] if p]
        return {"can_work": not problems, "problems": problems, "worker_alive": self.worker_alive,
                "queue_depth": self.queue_depth, "queue_limit": self.max_queue,
                "free_disk_bytes": free, "min_free_disk_bytes": self.min_free_bytes,
                "jobs_in_memory": len(self.jobs), "unsynced_records": len(self._unsynced),
                "failed_at_start": self.recovered,
                "models": {"idle_unload_s": self.idle_unload_s or None, "released_at": self.models_released_at},
                "last_error": self.last_error}

    # -- the callers' side -----------------------------------------------------------------------------------------
    def submit(self, request: ImageRequest | CheckedRequest, previews: int = 0, listen: bool = False,
               preview_every: int = 0, every_image: bool = False) -> Job:
        """Check the request now, unless a front already did (a bad one never queues), then queue it; a full
        queue is a RateLimitError.

        With `listen`, the job's first `follow()` starts before the job can, so that no event is missed;
        `previews` spreads that many preview images over the run; `preview_every` asks for one every that many
        steps (for a client that will follow the job), of each image with `every_image`. Previews are asked for
        here, not later: on a cluster the job leaves for its replica as soon as it is queued."""
        spec, checked = self.runner.check(request)
        job = Job(request=checked, spec=spec, total_steps=steps_of(checked))
        total = job.total_steps
        job.preview_steps = {min(total - 1, max(1, (i + 1) * total // (previews + 1))) for i in range(previews)}
        if preview_every:
            job.preview_every(preview_every, every_image)
        if listen:
            job.reserve_listener()
        return self.add(job)

    def add(self, job: Job) -> Job:
        """Queue a job made from a checked request; a full queue or a full disk refuses it."""
        problem = self._space_problem(self.free_bytes())
        if problem:
            raise InsufficientStorageError(f"{problem[0].upper()}{problem[1:]}: free some space and send it again.")
        with self._cond:
            self._release_finished()
            waiting = self._waiting()
            if waiting >= self.max_queue:
                self.metrics.rejected.inc()
                raise RateLimitError(f"The queue is full ({waiting} jobs waiting); try again shortly.",
                                     retry_after=max(1.0, waiting * 0.5))
            with storage_errors(self.workspace.home):
                self.store.insert(job)
            self.jobs[job.id] = job
            self._keys[job.id] = batch_key(job.spec, job.request)
            enhancer = self.runner.enhancer
            if enhancer is not None and enhancer.wants(job.spec, job.request.prompt, job.request.enhance_prompt):
                self._enhancing += 1
                self._enhancers.submit(self._enhance_then_enqueue, job)
            else:
                self.runner.enhance(CheckedRequest(job.spec, job.request))  # says so when one was asked for in vain
                self._enqueue(job)
        return job

    def _enhance_then_enqueue(self, job: Job) -> None:
        try:
            self.runner.enhance(CheckedRequest(job.spec, job.request))  # never raises: falls back, with a warning
        finally:
            with self._cond:
                self._enhancing -= 1
                if job.state != "queued":
                    pass
                elif job.cancel_requested.is_set():  # cancelled while its prompt was rewritten
                    self._finish(job, "cancelled")
                else:
                    self._enqueue(job)

    def _waiting(self) -> int:
        """Jobs not started yet (called with the lock held)."""
        return len(self._pending) + self._enhancing

    def _enqueue(self, job: Job) -> None:
        """Hand a new job to the worker (called with the lock held)."""
        self._pending.append(job)
        self._queue_moved(tell=False)
        self._cond.notify_all()

    def _queue_moved(self, tell: bool = True) -> None:
        """Each waiting job's place and each job's estimated time to finish, from the recent pace (called with the
        lock held); with `tell`, the waiting jobs' followers hear their new place."""
        pace = self._step_s
        ahead = 0
        for job in self._running:
            left = max(0, job.total_steps - job.step)
            job.eta_s = None if pace is None else left * pace
            ahead = max(ahead, left)  # a batch's jobs step together
        for place, job in enumerate(self._pending):
            ahead += job.total_steps
            moved = job.queue_position != place
            job.queue_position, job.eta_s = place, None if pace is None else ahead * pace
            if tell and moved and job.listeners:
                job.publish(JobEvent(job.snapshot()))

    def get(self, job_id: str) -> Job | dict[str, Any]:
        """The live job, or the record of one from before this process."""
        job = self.jobs.get(job_id)
        if job is not None:
            return job
        row = self.store.get(job_id)
        if row is None:
            raise NotFoundError(f"No job {job_id!r}.", param="job_id")
        return row

    def cancel(self, job_id: str) -> Job | dict[str, Any]:
        """Cancel a job of this engine, or ask the engine that runs it (another replica on the same database): then
        its record, as it is now, is the answer."""
        job = self.jobs.get(job_id)
        if job is None:
            if self.store.request_cancel(job_id):
                return self.store.get(job_id)
            raise NotFoundError(f"No running or queued job {job_id!r}.", param="job_id")
        with self._cond:
            if job.state == "queued" and job in self._pending:
                self._pending.remove(job)
                self._finish(job, "cancelled")
                self._queue_moved()
                return job
        if job.state not in FINAL:  # running, or taken into a batch that is forming: it stops at its first step
            job.cancel_requested.set()
        return job

    def _keep_lease(self) -> None:
        """Beside the worker: take cancellations asked for through other engines on the same database (every
        `poll_s`), renew this engine's lease and fail the jobs of engines that are gone (every few seconds)."""
        poll_s, renew_every = 0.5, max(1, int(self.store.lease_s / 3 / 0.5))
        ticks = 0
        while not self._stop:
            try:
                for job_id in self.store.cancel_requests():
                    if job_id in self.jobs:
                        self.cancel(job_id)
                ticks += 1
                if ticks % renew_every == 0:
                    self.store.renew_lease()
                    failed = self.store.fail_orphaned(ORPHANED)
                    if failed:
                        log.warning("engine: failed %d jobs of a server that stopped", failed)
            except Exception as exc:  # noqa: BLE001 - a database that is away for a while: tried again next time
                log.debug("engine: the lease could not be kept: %s", exc)
            with self._cond:
                if not self._stop:
                    self._cond.wait(poll_s)

    # -- the worker's side -----------------------------------------------------------------------------------------
    def _take_batch(self) -> list[Job]:
        with self._cond:
            self._running = []
            while not self._pending and not self._stop:
                self._cond.wait(0.5)
                self._release_finished()
                if self._idle_unload_due():
                    return []  # the worker releases the models, outside this lock
            if self._stop or not self._pending:
                return []
            first = self._pending.pop(0)
            key = self._keys[first.id]
            batch, images = [first], first.request.num_images
            deadline = time.monotonic() + self.batch_wait_s
            while images < self.max_batch_images:
                for job in list(self._pending):
                    fits = images + job.request.num_images <= self.max_batch_images
                    if fits and self._keys[job.id] == key:
                        self._pending.remove(job)
                        batch.append(job)
                        images += job.request.num_images
                remaining = deadline - time.monotonic()
                if remaining <= 0 or key[0] == "solo":
                    break
                self._cond.wait(remaining)
            self._running = batch
            for job in batch:
                job.queue_position = None
            self._queue_moved()
            return batch

    def _finish(self, job: Job, state: str, error: Any = None) -> None:
        """Finish a job in memory (so its caller always hears), then in its record."""
        job.state, job.finished = state, time.time()
        if state == "cancelled" and error is None:
            error = JobCancelledError(f"Job {job.id} was cancelled before it finished.")
        if error is not None:
            job.error = error
        self._record(job)
        self.metrics.jobs_finished.labels(state).inc()
        if job.started is not None:
            self.metrics.job_seconds.observe(job.finished - job.created)
        job.preview = None
        job.publish(JobEvent(job.snapshot()))
        with job.lock:
            job.done.set()
            callbacks, job.done_callbacks = job.done_callbacks, []
        for fn in callbacks:
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - a caller's callback (its event loop gone) fails alone
                self._note_error(exc, f"telling the caller of job {job.id}")
        self._keys.pop(job.id, None)
        with self._cond:
            self._finished.append(job)

    def _release_finished(self) -> None:
        """Forget finished jobs older than `keep_finished_s` (called with the lock held); their record stays."""
        horizon = time.time() - self.keep_finished_s
        unsynced = []  # kept live until their record tells the truth
        while self._finished and (self._finished[0].finished or 0) <= horizon:
            job = self._finished.popleft()
            if job.id in self._unsynced:
                unsynced.append(job)
            else:
                self.jobs.pop(job.id, None)
        self._finished.extendleft(reversed(unsynced))

    def _record(self, job: Job) -> None:
        """Write a job's state to the history; never raises. A write that fails (a full disk) is kept and
        retried with the next write that works, so that every record ends up telling the truth."""
        with self._record_lock:  # the worker and the savers both write
            try:
                with storage_errors(self.workspace.home):
                    self.store.update(job)
                    for other in list(self._unsynced.values()):
                        self.store.update(other)
                        self._unsynced.pop(other.id, None)
            except Exception as exc:  # noqa: BLE001 - the job goes on in memory
                self._unsynced[job.id] = job
                self._note_error(exc, f"recording job {job.id}")

    def _share_preview(self, job: Job) -> None:
        """Its latest preview into its record, where other servers share the database; never raises."""
        try:
            self.store.share_preview(job, job.preview[0])
        except Exception as exc:  # noqa: BLE001 - a preview is worth no failure
            log.debug("engine: the preview of job %s was not shared: %s", job.id, exc)

    def _note_error(self, exc: BaseException, doing: str) -> None:
        message = exc.message if isinstance(exc, EaselError) else f"{type(exc).__name__}: {exc}"
        self.last_error = {"message": f"{doing}: {message}", "at": time.time()}
        log.warning("engine: %s failed: %s", doing, message)

    def _timed_out(self, job: Job) -> bool:
        return job.started is not None and time.time() - job.started > self.job_timeout_s

    def _finish_stopped(self, job: Job) -> bool:
        """Finish a job that was cancelled (or ran over its time limit) as such; False if it was neither."""
        if job.cancel_requested.is_set():
            self._finish(job, "cancelled")
        elif self._timed_out(job):
            self._finish(job, "failed", GenerationError(
                f"The job ran over its {self.job_timeout_s:.0f} s limit and was stopped."))
        else:
            return False
        return True

    def _idle_unload_due(self) -> bool:
        return bool(self.idle_unload_s) and self.models_released_at is None and not self._pending and \
            time.monotonic() - self._last_busy >= self.idle_unload_s

    def _release_models(self) -> None:
        """After `idle_unload_s` without a job: the loaded models go, and their memory with them (an LLM server on
        the same GPU gets it back); the next job loads its model again."""
        held = self.runner.registry.release()
        self.models_released_at = now_iso()
        log.info("engine: idle for %.0f s, released the loaded models (%.2f GB)", self.idle_unload_s, held / 1e9)

    def _work(self) -> None:
        while not self._stop:
            batch: list[Job] = []
            try:
                batch = self._take_batch()
                if batch:
                    self.models_released_at = None
                    self._run(batch)
                    self._last_busy = time.monotonic()
                elif not self._stop and self._idle_unload_due():
                    self._release_models()
            except Exception as exc:  # noqa: BLE001 - the worker outlives any failure; the batch fails
                self._note_error(exc, "running a batch")
                error = self._as_error(exc, "The engine failed")
                for job in batch:
                    if job.state not in FINAL:
                        self._finish(job, "failed", error)
                time.sleep(0.05)  # a failure that repeats at once must not spin the CPU

    def _run(self, batch: list[Job]) -> None:
        now = time.time()
        for job in batch:
            job.state, job.started = "running", now
            self._record(job)
            job.publish(JobEvent(job.snapshot()))
        self.metrics.batch_images.observe(sum(j.request.num_images for j in batch))
        last_step = [time.perf_counter()]

        def on_step(step: int, total: int, preview=None) -> None:
            now_step = time.perf_counter()
            took, last_step[0] = now_step - last_step[0], now_step
            self.metrics.step_seconds.observe(took)
            shown = _render_previews(batch, step, preview) if preview is not None else {}
            for job in batch:
                if job.state != "running":
                    continue
                if job.cancel_requested.is_set():
                    # stopped at this step: its caller hears so now; its images are dropped at the end
                    self._finish(job, "cancelled")
                    continue
                job.step, job.total_steps = step, total
                previews = shown.get(job.id, ())
                if previews:
                    job.preview = list(previews)
                    self._share_preview(job)
            with self._cond:  # the pace, and so every job's estimate, before the step's events go out
                self._step_s = took if self._step_s is None else 0.7 * self._step_s + 0.3 * took
                self._queue_moved(tell=False)
            for job in batch:
                if job.state == "running":
                    job.publish(JobEvent(job.snapshot(), tuple(shown.get(job.id, ()))))
                    if step == total or step % 5 == 0:
                        self._record(job)

        def should_stop() -> bool:
            return all(j.cancel_requested.is_set() or self._timed_out(j) for j in batch)

        try:
            results = self.runner.run_many([CheckedRequest(j.spec, j.request) for j in batch], save=False,
                                           on_step=on_step, should_stop=should_stop,
                                           max_batch_images=self.max_batch_images)
        except Exception as exc:  # noqa: BLE001 - a model failure fails its jobs, never the worker
            error = self._as_error(exc, "The model failed")
            if error.status >= 500:
                self._note_error(exc, "running the model")
            for job in batch:
                if job.state == "running":
                    self._finish(job, "failed", error)
            return
        for job, result in zip(batch, results):
            if job.state != "running":
                continue  # cancelled during the run
            if not self._finish_stopped(job):
                self._savers.submit(self._save, job, result)

    def _save(self, job: Job, result) -> None:
        """Encode and save a job's images (all or none; on a saver thread) and finish it; a save that fails fails
        this job only. Each image is encoded once: the bytes saved are the bytes every front serves."""
        try:
            result.images = self.workspace.save_all(result.images)
        except Exception as exc:  # noqa: BLE001 - a full disk or a broken folder fails the job, not the worker
            self._note_error(exc, f"saving the images of job {job.id}")
            self._finish(job, "failed", self._as_error(exc, "The images could not be saved"))
            return
        job.result = result
        self._finish(job, "succeeded")

    def _as_error(self, exc: Exception, what: str) -> EaselError:
        """What a failed job reports: Easel's own errors as they are, a full disk anywhere as a 507 naming the
        workspace, anything else as a GenerationError saying what failed."""
        if isinstance(exc, EaselError):
            return exc
        if is_disk_full(exc):
            return out_of_space(self.workspace.home)
        return GenerationError(f"{what}: {type(exc).__name__}: {exc}")

    def update_metrics(self) -> None:
        """Bring the gauges up to date (before /metrics is read)."""
        self.metrics.queue_depth.set(self.queue_depth)
        for state, count in self.counts().items():
            self.metrics.jobs_active.labels(state).set(count)

    def counts(self) -> dict[str, int]:
        counts = {state: 0 for state in ("queued", "running")}
        for job in list(self.jobs.values()):
            if job.state not in FINAL:
                counts[job.state] += 1
        return counts


def _render_previews(batch: list[Job], step: int, preview) -> dict[str, tuple]:
    """The step's images of the jobs watched at this step, and only those: each job's first image, or all of them
    for a job that shows every one (decoding costs most of a step)."""
    at, wanted = 0, {}
    for job in batch:
        n = job.request.num_images
        if job.state == "running" and step in job.preview_steps:
            wanted[job.id] = list(range(at, at + (n if job.preview_all else 1)))
        at += n
    if not wanted:
        return {}
    indices = [i for ids in wanted.values() for i in ids]
    images = preview(indices) or []
    if len(images) != len(indices):
        return {}
    by_index = dict(zip(indices, images))
    return {job_id: tuple(by_index[i] for i in ids) for job_id, ids in wanted.items()}
