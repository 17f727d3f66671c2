"""The Ray back end: the same studies analysed by Ray actors that each hold the models once.

Why actors and not tasks: loading a bundle (torch, ONNX Runtime session) costs far more than one
study; an actor loads it once and then analyses studies one after another, like a pool worker.
The driver keeps a bounded number of studies in flight per actor (memory stays flat however
large the archive), takes results as they finish (``ray.wait``), and is the only writer of the
output folder and the journal, exactly as with the local pool, so a killed Ray batch resumes the
same way. Actors return the report files as bytes, so workers on other machines need to *read*
the inputs (a shared or replicated input path) but never write to the output disk.

``address``: ``"local"`` (or ``None``) starts a local Ray instance with ``num_cpus = workers`` and
no dashboard; anything else is passed to ``ray.init(address=...)`` (``"auto"``, ``ray://host:10001``).
"""

from __future__ import annotations

import os
import tempfile
from collections import deque
from typing import Any, Iterator, Sequence

from ..errors import SecondreadError
from . import work
from .discover import Study

PREFETCH = 2


class StudyActor:
    """Holds the bundles once; analyses one study per call (turned into a Ray actor at run time)."""

    def __init__(self, models: Sequence[str], llm=None):
        import torch

        from .runner import _load_bundles

        torch.set_num_threads(1)
        work.LLM = llm
        self.bundles = _load_bundles(models)
        self.scratch = tempfile.gettempdir()  # each study renders into its own folder, removed after

    def analyze(self, study: Study) -> list[dict[str, Any]]:
        return work.analyze_study(study, self.bundles, self.scratch)


def _init(address: str | None, workers: int) -> bool:
    """Connect to (or start) Ray; True when this call started it (and so must shut it down)."""
    try:
        import ray
    except ImportError:
        raise SecondreadError(None, "--ray needs Ray: pip install 'secondread[ray]'") from None
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no network at run time
    try:
        if address in (None, "", "local"):
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
                     configure_logging=False, logging_level="ERROR")
        else:
            ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    except Exception as exc:  # ConnectionError, RuntimeError, ...: one line, no traceback
        raise SecondreadError(None, f"cannot start or reach Ray at {address or 'local'} "
                                    f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    return True


def run_ray(studies: Sequence[Study], models: Sequence[str], bundles: dict, address: str | None,
            workers: int, llm=None) -> Iterator[tuple[Study, list]]:
    """Analyse ``studies`` on ``workers`` Ray actors; yield each study's outcomes as it ends."""
    if not studies:
        return
    started = _init(address, workers)
    import ray

    actor_cls = ray.remote(num_cpus=1, max_restarts=-1)(StudyActor)
    actors = [actor_cls.remote(list(models), llm) for _ in range(workers)]
    pending = deque(studies)
    inflight: dict[Any, tuple[int, Study]] = {}
    load = [0] * workers
    try:
        while pending or inflight:
            for i in range(workers):
                while pending and load[i] < PREFETCH:
                    study = pending.popleft()
                    inflight[actors[i].analyze.remote(study)] = (i, study)
                    load[i] += 1
            done, _ = ray.wait(list(inflight), num_returns=1)
            for ref in done:
                i, study = inflight.pop(ref)
                load[i] -= 1
                try:
                    outcomes = ray.get(ref)
                except ray.exceptions.RayActorError:
                    # the actor died (Ray restarts it); this study is failed, the rest go on
                    outcomes = [{"row": work._row(study, b, "failed",
                                                  error="the Ray worker died while analysing this study"),
                                 "files": None} for b in bundles.values()]
                except ray.exceptions.RayTaskError as exc:
                    outcomes = [{"row": work._row(study, b, "failed",
                                                  error=f"analysis failed on Ray ({type(exc.cause).__name__})"),
                                 "files": None} for b in bundles.values()]
                yield study, outcomes
    finally:
        for ref in list(inflight):
            ray.cancel(ref, force=True)
        for actor in actors:
            ray.kill(actor)
        if started:
            ray.shutdown()
