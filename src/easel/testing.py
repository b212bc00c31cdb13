"""Test helpers for Easel and its plugins: a provider that runs no model.

`FakeProvider` takes the place of a real provider (`registry.add(FakeProvider())` replaces the one with its name):
it records every call, paints each image in one colour derived from its seed (so batching and seeds can be checked
by pixel), reports its steps like a pipeline, and can be made to fail.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

from .providers.base import Batch, Progress, Provider, ProviderOutput


def seed_colour(seed: int) -> tuple[int, int, int]:
    """The colour FakeProvider paints for `seed`."""
    rng = random.Random(seed)
    return rng.randrange(256), rng.randrange(256), rng.randrange(256)


class FakeProvider(Provider):
    """Paints one colour per seed at the requested size, reporting each step to `progress`.

    `fail_rate` makes that share of calls raise RuntimeError (drawn from `rng_seed`, so a run is repeatable);
    `step_s` is how long each step takes; `hold_at` stops every call at that step until `release()` (so a test
    can line jobs up behind a running one); `calls` records (model name, number of requests, images) per call."""

    def __init__(self, name: str = "diffusers", fail_rate: float = 0.0, rng_seed: int = 0, max_steps: int = 4,
                 step_s: float = 0.0, hold_at: int | None = None):
        self.name = name
        self.fail_rate = fail_rate
        self.max_steps = max_steps
        self.step_s = step_s
        self.hold_at = hold_at
        self.held = threading.Event()  # set while a call waits at `hold_at`
        self._release = threading.Event()
        self.calls: list[dict[str, Any]] = []
        self._rng = random.Random(rng_seed)
        self._lock = threading.Lock()

    def release(self) -> None:
        """Let held calls (and every later one) go on."""
        self._release.set()

    def run_batch(self, batch: Batch, progress: Progress) -> list[ProviderOutput]:
        from PIL import Image

        with self._lock:
            self.calls.append({"model": batch.spec.name, "requests": len(batch), "images": len(batch.all_seeds)})
            fail = self._rng.random() < self.fail_rate
        if fail:
            raise RuntimeError("FakeProvider failed on purpose")
        first = batch.first
        total = min(first.num_inference_steps or 1, self.max_steps)
        size = (first.width or 64, first.height or 64)

        def paint(indices: list[int]) -> list:
            return [Image.new("RGB", size, seed_colour(batch.all_seeds[i])) for i in indices]

        for step in range(1, total + 1):
            time.sleep(self.step_s)
            if step == self.hold_at and not self._release.is_set():
                self.held.set()
                self._release.wait(60)
            progress.step(step, total, paint)  # previews: the final colours, at every step
            if progress.stopped:
                break
        return [ProviderOutput(images=[Image.new("RGB", size, seed_colour(s)) for s in seeds]) for _, seeds in batch]
