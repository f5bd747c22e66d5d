"""The service's model at work: one engine per device holds the model, loaded once, and takes queued jobs a
few at a time, segmenting them as one `unetr predict` batch (`inference.batch.predict_batch`: on a GPU the
next scan is decoded and the last one's outputs written while the model works). Each job's label map, sidecars
and plausibility report land in its folder; a scan that fails is its job's one-line failure, never the
service's."""

from __future__ import annotations

import threading
from collections.abc import Callable

from unetr_cli.console import Reporter
from unetr_cli.errors import InputError, failure_message
from unetr_cli.serve.jobs import Job, JobStore
from unetr_cli.serve.uploads import Refused, client_line, source_of

POLL_S = 0.5  # how often an idle engine looks for queued jobs when none is announced


class Engine:
    """Jobs on one device. `state` is loading, ready or failed (with `error`)."""

    def __init__(
        self, store: JobStore, settings, weights, device, batch: int, on_done: Callable[[Job], None]
    ):
        self.store, self.settings, self.weights, self.device = store, settings, weights, device
        self.batch, self.on_done = batch, on_done
        self.state, self.error, self.segmenter = "loading", None, None

    def start(self, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(target=self._run, args=(stop,), name=f"unetr-engine-{self.device}")
        thread.start()
        return thread

    def _run(self, stop: threading.Event) -> None:
        if not self.load():
            return
        while not stop.is_set():
            self.store.arrived.clear()
            if not self.segment_queued():
                self.store.arrived.wait(POLL_S)  # a new job, or a look every POLL_S (and at a stop)

    def load(self) -> bool:
        """Build the model on the device (on failure the health endpoint says why); whether it is ready."""
        from unetr_cli.inference.scan import load_segmenter

        try:
            self.segmenter = load_segmenter(self.settings, self.device, lambda: self.weights)
        except Exception as err:  # no model, no jobs
            self.state, self.error = "failed", failure_message(err, "model")
            return False
        self.state = "ready"
        return True

    def segment_queued(self) -> int:
        """Segment up to `batch` queued jobs; returns how many were taken (0: none was queued)."""
        jobs = self.store.claim(self.batch)
        if jobs:
            self._segment(jobs)
        return len(jobs)

    def _segment(self, jobs: list[Job]) -> None:
        from unetr_cli.inference.batch import PredictOptions, predict_batch

        ready, sources = [], []
        for job in jobs:
            try:
                sources.append(source_of(job))
                ready.append(job)
            except (Refused, InputError) as err:
                self.store.finish(job.id, client_line(str(err), job))
        if not ready:
            return
        options = PredictOptions(
            report=True,
            overwrite=True,  # a job queued again after a restart may have begun its outputs
            provenance={"checkpoint": str(self.weights.source), "settings": self.settings.to_dict()},
        )
        targets = [job.labels for job in ready]
        try:
            result = predict_batch(
                sources, targets, lambda: self.segmenter, self.device, options, _JobLines(ready)
            )
        except Exception as err:  # a failure of the batch as a whole: each of its jobs says so
            for job in ready:
                self.store.finish(job.id, client_line(failure_message(err, job.name), job))
            return
        for job, source in zip(ready, sources, strict=True):
            if source in result.failed:
                self.store.finish(job.id, client_line(result.failed[source], job))
            else:
                self.store.finish(job.id)
                self.on_done(self.store.get(job.id))


class _JobLines(Reporter):
    """The batch's warnings in the service's log, each naming its job rather than the job's folder."""

    def __init__(self, jobs: list[Job]):
        super().__init__("quiet")
        self.jobs = jobs

    def warn(self, text: str) -> None:
        for job in self.jobs:
            if str(job.folder) in text:
                text = f"job {job.id}: " + client_line(text, job)
        super().warn(text)
