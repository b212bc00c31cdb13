"""Prometheus metrics of the engine, in a registry of their own (one per app)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class EngineMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.queue_depth = Gauge("easel_queue_depth", "Jobs waiting in the queue.", registry=r)
        self.jobs_active = Gauge("easel_jobs", "Jobs not yet finished, by state.", ["state"], registry=r)
        self.jobs_finished = Counter("easel_jobs_finished", "Jobs finished, by final state.", ["state"], registry=r)
        self.rejected = Counter("easel_jobs_rejected", "Jobs refused because the queue was full.", registry=r)
        self.batch_images = Histogram("easel_batch_images", "Images per model call.",
                                      buckets=(1, 2, 3, 4, 6, 8, 12, 16), registry=r)
        self.step_seconds = Histogram("easel_step_seconds", "Seconds per denoising step.",
                                      buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5), registry=r)
        self.job_seconds = Histogram("easel_job_seconds", "Seconds from submission to the end of a job.",
                                     buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300), registry=r)
        self.model_load_seconds = Gauge("easel_model_load_seconds", "Seconds the default model took to load.",
                                        registry=r)
        self.memory_bytes = Gauge("easel_process_resident_bytes", "Resident memory of the server.", registry=r)
