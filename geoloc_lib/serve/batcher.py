"""Requests that wait together share one forward pass.

The server answers each request in a thread of its own, and the model places one batch at a time. A request
that finds the model busy leaves its photos in a queue; whichever request takes the model next places every
photo waiting then (up to `batch_photos`) in one forward pass and hands each request its own rows. A request
alone is placed at once, with no waiting window. On this project's 2-core CPU a batch of 8 photos costs about a
fifth of 8 passes of one (`make bench-serve` measures the server both ways; docs/speed.md).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd


@dataclass
class _Job:
    images: list
    cell_probs: bool
    done: threading.Event = field(default_factory=threading.Event)
    frame: pd.DataFrame | None = None
    error: BaseException | None = None


class Batcher:
    """`predict(images, cell_probs)` for many threads, through one `place(images, batch_size, cell_probs)` (a
    `Predictor.predict`) at a time, the photos of the requests waiting for it placed together."""

    def __init__(self, place: Callable[..., pd.DataFrame], batch_photos: int = 32):
        self.place, self.batch_photos = place, batch_photos
        self._waiting: list[_Job] = []
        self._queue_lock = threading.Lock()  # guards the queue, held for an instant
        self._model_lock = threading.Lock()  # held through a forward pass

    def predict(self, images: list, cell_probs: bool = False) -> pd.DataFrame:
        """One row per image, in order, as `place` gives them."""
        job = _Job(list(images), cell_probs)
        with self._queue_lock:
            self._waiting.append(job)
        while not job.done.is_set():
            with self._model_lock:
                if not job.done.is_set():  # another request may have placed it while this one waited
                    self._run(self._take())
        if job.error is not None:
            raise job.error
        return job.frame

    def _take(self) -> list[_Job]:
        """The oldest waiting request, and those after it while their photos fit in `batch_photos`."""
        with self._queue_lock:
            jobs, photos = [self._waiting[0]], len(self._waiting[0].images)
            for job in self._waiting[1:]:
                if photos + len(job.images) > self.batch_photos:
                    break
                jobs.append(job)
                photos += len(job.images)
            del self._waiting[: len(jobs)]
        return jobs

    def _run(self, jobs: list[_Job]) -> None:
        images = [image for job in jobs for image in job.images]
        try:
            frame = self.place(images, max(len(images), 1), cell_probs=any(job.cell_probs for job in jobs))
        except BaseException as err:  # every request of the batch hears why
            for job in jobs:
                job.error = err
                job.done.set()
            return
        start = 0
        for job in jobs:
            job.frame = frame.iloc[start : start + len(job.images)].reset_index(drop=True)
            start += len(job.images)
            job.done.set()
