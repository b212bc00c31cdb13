"""Easel on a Ray Serve cluster: the server of `easel serve` (every route, unchanged for its clients) as an ingress
deployment, and one model deployment per model whose replicas batch jobs by the engine's own rules.

    from ray import serve
    from easel.config import Settings
    from easel.serving.ray import build_app

    serve.run(build_app(Settings()), name="easel", route_prefix="/")

The ingress checks, queues, records, saves and serves, as `easel serve` does; only running the model moves to the
model replicas. A job whose replica dies is sent again to another (the seed was drawn at the check, so the
image is the same) up to `EASEL_RAY_RETRIES` times: its client sees a slower answer, not an error.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import ray
from prometheus_client import Gauge
from ray import serve
from ray.serve.exceptions import DeploymentUnavailableError, ReplicaUnavailableError, RequestCancelledError

from ..addons import FOLDERS
from ..checks import CheckedRequest
from ..config import Settings, get_settings
from ..engine.jobs import FINAL, Job, JobEvent
from ..engine.queue import Engine, steps_of
from ..engine.runner import Runner
from ..errors import GenerationError, error_from

log = logging.getLogger("easel.ray")
APP_NAME = "easel"
PROGRESS_EVERY_S = 0.1  # a replica reports a job's steps to its ingress at most this often (a GPU steps every ~30 ms)
# what a replica that died (or a node that went) raises into the calls it had
REPLICA_GONE = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError, ReplicaUnavailableError,
                DeploymentUnavailableError)


# -- the model replicas ------------------------------------------------------------------------------------------------
class ReplicaEngine(Engine):
    """A model replica's engine: the queue, batching, previews and cancellation of `easel serve`; it neither saves
    nor records (the ingress that sent the job does both)."""

    def __init__(self, runner: Runner, **options: Any):
        super().__init__(runner, **options)
        self.batch_of: dict[str, tuple[int, int]] = {}  # job id -> (number, images) of the model call it ran in
        self._calls = 0

    def _record(self, job: Job) -> None:
        pass

    def _run(self, batch: list[Job]) -> None:
        self._calls += 1
        images = sum(j.request.num_images for j in batch)
        for job in batch:
            self.batch_of[job.id] = (self._calls, images)
        super()._run(batch)

    def _save(self, job: Job, result) -> None:
        job.result = result
        self._finish(job, "succeeded")


def replica_settings(settings: Settings) -> Settings:
    """A replica's own settings: a private scratch home (nothing is saved there), the operator's folders of every
    kind (models, LoRAs, embeddings, ControlNets, IP-Adapters, upscalers, checkpoint configs), no database, and a
    queue deep enough for every call Ray sends it."""
    scratch = Path(tempfile.mkdtemp(prefix="easel-replica-"))
    if settings.keys_path.is_file():  # the operator's keys (a token for gated models), readable by it alone
        shutil.copy2(settings.keys_path, scratch / settings.keys_path.name)
    folders = {kind.setting: settings.folder(kind.folder) for kind in FOLDERS}  # every kind the ingress checks
    return settings.model_copy(update={"home": scratch, **folders, "database_url": None, "min_free_disk_mb": 0,
                                       "max_queue": _replica_queue(settings)})


def _replica_queue(settings: Settings) -> int:
    return max(2 * settings.max_batch_images, settings.max_queue)


class ModelReplica:
    """One model on one device: jobs from every ingress replica, batched by the engine's rules (same model, size,
    steps, ...). `run` streams a job's progress and ends with its result."""

    def __init__(self, settings: dict[str, Any], model: str):
        settings = replica_settings(Settings(**settings))
        gpus = ray.get_runtime_context().get_assigned_resources().get("GPU", 0) if ray.is_initialized() else 0
        if not gpus:
            import torch

            cpus = max(1, int(settings.ray_cpus_per_replica))
            torch.set_num_threads(cpus)  # the CPUs it was given, not every core of the node
            settings = settings.model_copy(update={"device": settings.device or "cpu"})
        self.scratch = settings.home
        runner = Runner(settings, allow_paths=False)
        spec = runner.catalog.resolve(model)
        runner.registry.get(spec.provider).warm(spec)
        self.model = spec.name
        self.engine = ReplicaEngine.from_settings(runner).start()
        try:
            self.replica = serve.get_replica_context().replica_id.unique_id
        except Exception:  # noqa: BLE001 - outside Serve (a test calling the class directly)
            self.replica = "local"

    async def run(self, checked: CheckedRequest, preview_steps: list[int], preview_all: bool):
        """Queue the job here and stream `("progress", status, step, total, previews)` events, then one
        `("final", status, result, error, error_status, info)`. A call cancelled by its ingress cancels the job."""
        job = Job(request=checked.request, spec=checked.spec, total_steps=steps_of(checked.request),
                  preview_steps=set(preview_steps), preview_all=preview_all)
        job.reserve_listener()
        self.engine.add(job)
        sent, last = 0.0, None
        try:
            async with job.follow_async() as events:
                async for event in events:
                    if not event.final:
                        # each event is a message to the ingress: a new state, a preview or the last step always
                        # go, other steps at most every PROGRESS_EVERY_S
                        now = time.monotonic()
                        if (event.status != last or event.previews or event.step == event.total_steps
                                or now - sent >= PROGRESS_EVERY_S):
                            sent, last = now, event.status
                            yield ("progress", event.status, event.step, event.total_steps, event.previews)
                        continue
                    error = job.error
                    call, images = self.engine.batch_of.pop(job.id, (0, 0))
                    info = {"replica": self.replica, "call": call, "batch_images": images}
                    yield ("final", event.status, job.result, error.to_dict() if error is not None else None,
                           getattr(error, "status", 500), info)
        finally:
            if job.state not in FINAL:  # its ingress went away or cancelled it
                self.engine.cancel(job.id)

    def check_health(self) -> None:
        if not self.engine.worker_alive:
            raise RuntimeError("the engine's worker is not running")

    def __del__(self):
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.stop()
        if hasattr(self, "scratch"):
            shutil.rmtree(self.scratch, ignore_errors=True)


# -- the ingress -------------------------------------------------------------------------------------------------------
class ClusterEngine(Engine):
    """The engine of an ingress replica: a job whose model has a model deployment runs there (its replicas batch);
    any other (a remote service's model) runs on this replica's own worker. Everything else (checks, the queue
    bound, records, saving, events, cancelling) is the engine's own."""

    def __init__(self, runner: Runner, *, models: dict[str, Any], retries: int = 3, **options: Any):
        super().__init__(runner, **options)
        self.models = models  # model name -> its deployment's handle
        self.retries = retries
        self.remote: dict[str, Job] = {}
        self.replicas: dict[str, dict[str, float]] = collections.defaultdict(
            lambda: {"jobs": 0, "images": 0, "batch_images_sum": 0})
        self.retried = 0
        self._calls_seen: dict[tuple[str, int], None] = {}  # model calls already counted in the batch histogram
        self._loop = asyncio.new_event_loop()
        self._dispatcher = threading.Thread(target=self._loop.run_forever, name="easel-dispatch", daemon=True)
        self._status: tuple[float, dict[str, Any]] = (0.0, {})
        r = self.metrics.registry
        self._gauges = {
            "replicas": Gauge("easel_cluster_replicas", "Replicas of each deployment, by state.",
                              ["deployment", "state"], registry=r),
            "in_flight": Gauge("easel_cluster_jobs_in_flight", "Jobs sent to a model deployment and not yet back.",
                               ["model"], registry=r),
            "jobs": Gauge("easel_replica_jobs", "Jobs each model replica ran for this ingress.", ["replica"],
                          registry=r),
            "images": Gauge("easel_replica_images", "Images each model replica made for this ingress.",
                            ["replica"], registry=r),
            "batch": Gauge("easel_replica_mean_batch_images", "Mean images per model call, per replica.",
                           ["replica"], registry=r),
            "retried": Gauge("easel_cluster_jobs_retried", "Jobs sent again because their replica died.",
                             registry=r),
        }

    def start(self) -> ClusterEngine:
        self._dispatcher.start()
        super().start()
        return self

    def stop(self) -> None:
        super().stop()
        self._loop.call_soon_threadsafe(self._loop.stop)

    def _waiting(self) -> int:
        return len(self._pending) + sum(1 for j in list(self.remote.values()) if j.state == "queued")

    def _enqueue(self, job: Job) -> None:
        if job.spec.name not in self.models:
            super()._enqueue(job)
            return
        self.remote[job.id] = job
        # in a context of its own: the call to the replica belongs to the job, not to the HTTP request that made
        # it (Ray Serve cancels the calls a cancelled request made; the engine decides when a job is cancelled)
        self._loop.call_soon_threadsafe(lambda: self._loop.create_task(self._dispatch(job)),
                                        context=contextvars.Context())

    def cancel(self, job_id: str) -> Job | dict[str, Any]:
        job = self.remote.get(job_id)
        if job is None:
            return super().cancel(job_id)
        job.cancel_requested.set()  # its call to the replica is cancelled; the replica drops the job
        return job

    async def _dispatch(self, job: Job) -> None:
        try:
            for attempt in range(self.retries + 1):
                try:
                    await self._call_replica(job)
                    return
                except REPLICA_GONE as exc:
                    if job.cancel_requested.is_set():
                        self._finish(job, "cancelled")
                        return
                    if attempt == self.retries:
                        raise
                    self.retried += 1
                    log.warning("job %s: its model replica went (%s); sending it again (%d of %d)", job.id,
                                type(exc).__name__, attempt + 1, self.retries)
                    job.step = 0
        except Exception as exc:  # noqa: BLE001 - a job fails alone; the dispatcher goes on
            if job.state not in FINAL:
                self._note_error(exc, f"running job {job.id} on a model replica")
                self._finish(job, "failed", self._as_error(exc, "The model replica failed"))
        finally:
            self.remote.pop(job.id, None)

    async def _call_replica(self, job: Job) -> None:
        handle = self.models[job.spec.name].options(stream=True)
        stream = handle.run.remote(CheckedRequest(job.spec, job.request), sorted(job.preview_steps), job.preview_all)
        watcher = asyncio.ensure_future(self._stop_when_asked(job, stream))
        try:
            async for kind, status, *rest in stream:
                if kind == "progress":
                    self._progress(job, status, *rest)
                else:
                    self._final(job, status, *rest)
        except (RequestCancelledError, asyncio.CancelledError):
            if not self._finish_stopped(job):
                raise GenerationError("The call to the model replica was cancelled by Ray.") from None
        finally:
            watcher.cancel()

    async def _stop_when_asked(self, job: Job, stream) -> None:
        """Cancel the call once the job is cancelled or over its time limit."""
        while not (job.cancel_requested.is_set() or self._timed_out(job)):
            await asyncio.sleep(0.1)
        stream.cancel()

    def _progress(self, job: Job, status: str, step: int, total: int, previews: tuple) -> None:
        if status != "running" or job.state in FINAL:
            return
        if job.state == "queued":
            job.state, job.started = "running", time.time()
            self._record(job)
        job.step, job.total_steps = step, total
        if previews:
            job.preview = list(previews)
            self._share_preview(job)
        job.publish(JobEvent(job.snapshot(), tuple(previews or ())))
        if step == total or step % 5 == 0:
            self._record(job)

    def _final(self, job: Job, status: str, result, error: dict | None, error_status: int,
               info: dict[str, Any]) -> None:
        stats = self.replicas[info["replica"]]
        stats["jobs"] += 1
        stats["images"] += job.request.num_images
        stats["batch_images_sum"] += info["batch_images"]
        call = (info["replica"], info["call"])
        if info["call"] and call not in self._calls_seen:  # once per model call, however many of its jobs came here
            self._calls_seen[call] = None
            if len(self._calls_seen) > 4096:
                self._calls_seen.pop(next(iter(self._calls_seen)))
            self.metrics.batch_images.observe(info["batch_images"])
        if job.state in FINAL:
            return
        if status == "succeeded":
            self._savers.submit(self._save, job, result)
        elif status == "cancelled":
            self._finish(job, "cancelled")
        else:
            self._finish(job, "failed", error_from(error_status, error or {}))

    def cluster(self) -> dict[str, Any]:
        """The cluster as this ingress sees it: each model deployment's replicas (from Ray Serve), the jobs in
        flight on them, and per replica the jobs, images and mean batch it ran for this ingress."""
        at, status = self._status
        if time.monotonic() - at > 2:
            try:
                app = serve.status().applications.get(APP_NAME)
                deployments = {name: {"status": str(d.status.value if hasattr(d.status, "value") else d.status),
                                      "replicas": {str(k.value if hasattr(k, "value") else k): v
                                                   for k, v in d.replica_states.items()}}
                               for name, d in (app.deployments.items() if app else [])}
            except Exception as exc:  # noqa: BLE001 - the controller is away: said, not raised
                deployments = {"error": f"{type(exc).__name__}: {exc}"}
            status = {"deployments": deployments}
            self._status = (time.monotonic(), status)
        replicas = {rid: {"jobs": int(s["jobs"]), "images": int(s["images"]),
                          "mean_batch_images": round(s["batch_images_sum"] / s["jobs"], 2) if s["jobs"] else 0}
                    for rid, s in list(self.replicas.items())}
        in_flight = collections.Counter(j.spec.name for j in list(self.remote.values()))
        return {**status, "models": sorted(self.models), "in_flight": dict(in_flight), "replicas": replicas,
                "retried": self.retried}

    def update_metrics(self) -> None:
        super().update_metrics()
        cluster, g = self.cluster(), self._gauges
        for name, deployment in cluster["deployments"].items():
            if isinstance(deployment, dict):
                for state, count in deployment.get("replicas", {}).items():
                    g["replicas"].labels(name, state).set(count)
        for model in self.models:
            g["in_flight"].labels(model).set(cluster["in_flight"].get(model, 0))
        for replica, stats in cluster["replicas"].items():
            g["jobs"].labels(replica).set(stats["jobs"])
            g["images"].labels(replica).set(stats["images"])
            g["batch"].labels(replica).set(stats["mean_batch_images"])
        g["retried"].set(self.retried)

    def health(self) -> dict[str, Any]:
        body = super().health()
        cluster = self.cluster()
        body["problems"] += _cluster_problems(cluster)
        body["can_work"] = not body["problems"]
        body["cluster"] = cluster
        return body


def _cluster_problems(cluster: dict[str, Any]) -> list[str]:
    """Why the cluster cannot work now: its state unread (the controller away), or a model whose deployment Ray
    Serve does not list yet or lists without a running replica (one still starting, or replaced)."""
    deployments = cluster.get("deployments", {})
    if "error" in deployments:
        return [f"the cluster's state cannot be read ({deployments['error']})"]
    return [f"the model {model} has no running replica" for model in cluster["models"]
            if not deployments.get(_deployment_name(model), {}).get("replicas", {}).get("RUNNING")]


class Ingress:
    """The HTTP ingress: `create_app` (every route of `easel serve`) over a ClusterEngine."""

    def __init__(self, settings: dict[str, Any], models: dict[str, Any]):
        self.settings = Settings(**settings)
        self.models = models

    def __serve_build_asgi_app__(self):
        from ..server.app import create_app

        runner = Runner(self.settings, allow_paths=False)
        engine = ClusterEngine.from_settings(runner, models=self.models, retries=self.settings.ray_retries)
        return create_app(self.settings, engine=engine, warm=False)


# -- building the application ------------------------------------------------------------------------------------------
def deployed_models(settings: Settings) -> list[str]:
    """The models that get a model deployment: EASEL_RAY_MODELS, else the server's model (and its edit model)."""
    names = [m.strip() for m in settings.ray_models.split(",") if m.strip()]
    served = [settings.openai_model or settings.default_model, settings.openai_edit_model]
    return names or list(dict.fromkeys(name for name in served if name))


def _deployment_name(model: str) -> str:
    return "model-" + "".join(c if c.isalnum() or c in "-_" else "-" for c in model)


def _scaling(settings: Settings) -> dict[str, Any]:
    if settings.autoscale_range is None:
        return {"num_replicas": settings.ray_replicas}
    low, high = settings.autoscale_range
    return {"autoscaling_config": {
        "min_replicas": low, "initial_replicas": max(low, 1), "max_replicas": high,
        # a replica is busy with one batch running and the next forming
        "target_ongoing_requests": settings.max_batch_images,
        "upscale_delay_s": settings.ray_upscale_delay_s, "downscale_delay_s": settings.ray_downscale_delay_s,
        "metrics_interval_s": min(10.0, max(0.5, settings.ray_upscale_delay_s / 4)),
        "look_back_period_s": min(30.0, max(1.0, settings.ray_upscale_delay_s)),
    }}


def gpus_per_replica(settings: Settings) -> float:
    if settings.ray_gpus_per_replica is not None:
        return settings.ray_gpus_per_replica
    return 1.0 if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) >= 1 else 0.0


def build_app(settings: Settings | dict[str, Any] | None = None):
    """The Ray Serve application of Easel: an ingress deployment and one model deployment per model, configured by
    the settings (EASEL_RAY_* and the rest). Pass it to `serve.run`, or name it in a Serve config or RayService
    (`import_path: easel.serving.ray:build_app`), whose `args` are settings by name (`ray_replicas: 2`)."""
    if isinstance(settings, dict):
        settings = Settings(**settings)
    settings = settings or get_settings()
    runner = Runner(settings, allow_paths=False)
    payload = settings.model_dump(mode="json")
    gpus = gpus_per_replica(settings)
    models = {}
    for name in deployed_models(settings):
        spec = runner.catalog.resolve(name)
        deployment = serve.deployment(ModelReplica).options(
            name=_deployment_name(spec.name), ray_actor_options={"num_gpus": gpus,
                                                                 "num_cpus": settings.ray_cpus_per_replica},
            # enough calls reach a replica for a full batch running and the next one forming
            max_ongoing_requests=_replica_queue(settings), health_check_period_s=2.0,
            graceful_shutdown_timeout_s=5.0, **_scaling(settings))
        models[spec.name] = deployment.bind(payload, spec.name)
    ingress = serve.deployment(serve.ingress()(Ingress)).options(
        name="ingress", num_replicas=settings.ray_ingress_replicas, ray_actor_options={"num_cpus": 0},
        # Ray's default of 5 would starve the replicas' batching: the ingress's own queue bound applies instead
        max_ongoing_requests=max(256, 4 * settings.max_queue))
    return ingress.bind(payload, models)


def run_cluster(settings: Settings, host: str, port: int, address: str | None = None) -> None:
    """`easel serve --ray`: start (or join, with `address`) a Ray cluster, deploy Easel and serve on host:port until
    interrupted. Ray itself listens on every network interface, whatever `host` says: run it where that is safe."""
    import signal

    if address:
        ray.init(address=address, namespace=APP_NAME, log_to_driver=False)
    else:
        # Ray runs its workers at nice 15 by default; here the model replicas are the work, so they run at the
        # priority of the server itself (not behind every other process of the machine)
        os.environ.setdefault("RAY_worker_niceness", "0")
        # Ray's own metrics cost ~0.1 CPU-s per request on a small machine (bench_ray.py); Easel's /metrics has
        # the cluster's figures. Set RAY_enable_metrics_collection=1 to have Ray's as well.
        os.environ.setdefault("RAY_enable_metrics_collection", "0")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report leaves the machine
        ray.init(num_gpus=settings.ray_num_gpus, include_dashboard=False, namespace=APP_NAME, log_to_driver=False,
                 _node_ip_address="127.0.0.1" if host in ("127.0.0.1", "localhost") else None)
    serve.start(http_options={"host": host, "port": port, "request_timeout_s": settings.job_timeout_s + 60})
    serve.run(build_app(settings), name=APP_NAME, route_prefix="/", blocking=False)
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.set())
    try:
        stopped.wait()
    finally:
        serve.shutdown()
        ray.shutdown()
