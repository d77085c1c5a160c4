"""What every Ray Data job here shares: joining Ray, and the actor pools that run the models."""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, replace

import ray


@dataclass(frozen=True)
class StageResources:
    """Where one model stage runs: how many actors at most, and what each actor reserves."""

    max_actors: int | None = 1  # None: as many as the cluster can place (a job's planner decides)
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    # Small batches: both models loop over images inside a batch anyway, and small batches stream
    # results to the writer sooner (less work lost to a kill, steadier progress). A stage whose call
    # writes a fragment (the index job's Alpha-CLIP) sets a larger batch: pipelines/index/job.py.
    batch_size: int = 2


def init_ray(address: str | None) -> None:
    if not ray.is_initialized():
        # No address: the cluster this process was submitted to (RAY_ADDRESS), else a fresh local
        # instance, never whatever cluster happens to run on this machine.
        with warnings.catch_warnings():
            # Starting Ray locally forks this process, and LanceDB (imported) warns in every child
            # that using it after a fork may deadlock. These children exec Ray's own programs at
            # once and never touch LanceDB, so the warning does not apply to them.
            warnings.filterwarnings("ignore", message="lancedb fork support", category=RuntimeWarning)
            ray.init(address=address or os.environ.get("RAY_ADDRESS") or "local", log_to_driver=False,
                     logging_level=logging.WARNING)
        _worker_errors_to_stderr()
    quiet_ray_data()


def _worker_errors_to_stderr() -> None:
    """Ray's driver prints the errors its workers report ("(raylet) Task ... failed", a worker killed
    for memory) on stdout, even with log_to_driver=False; stdout carries a job's results (JSON), so
    they go to stderr, which the CLI keeps in its log file."""
    from ray._private import worker

    printer = getattr(worker, "print_to_stdstream", None)
    if printer is None or getattr(printer, "to_stderr", False):
        return

    def to_stderr(data, **kwargs):
        return printer({**data, "is_err": True}, **kwargs)

    to_stderr.to_stderr = True
    worker.print_to_stdstream = to_stderr


def quiet_ray_data() -> None:
    """Keep Ray Data's operator internals off the console; the jobs print their own progress (progress.py)."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    # Turning them off makes Ray Data say so once per job, telling the user how to turn them back on.
    progress_logger = logging.getLogger("ray.data._internal.progress")
    if not any(isinstance(f, _NoProgressBarNotice) for f in progress_logger.filters):
        progress_logger.addFilter(_NoProgressBarNotice())


class _NoProgressBarNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Progress bars disabled")


def device_for_cluster(device: str, resources: StageResources, cluster: dict) -> tuple[str, StageResources]:
    """Device "auto" decided for a cluster: CUDA, one GPU per actor unless a share is set, where it has GPUs.

    Deciding inside an actor would not do: Ray hides every GPU from an actor that reserves none,
    so there "auto" always means the CPU.
    """
    if device != "auto":
        return device, resources
    if float(cluster.get("GPU", 0.0)) <= 0:
        return "cpu", resources
    return "cuda", resources if resources.num_gpus > 0 else replace(resources, num_gpus=1.0)


def actor_pool(resources: StageResources, actors: int | None = None, *, in_flight: int = 2) -> dict:
    """map_batches arguments for a model stage: `actors` actors to start with (default max_actors).

    The pool may shrink to one actor when a node is lost; a job should start no more actors than the
    cluster can place, since actors that cannot be placed leave a Ray Data job waiting forever.
    `in_flight` batches are queued per actor: two keep one prefetched; one suits batches that are
    minutes of work, where queueing leaves the other actors idle.
    """
    actors = resources.max_actors if actors is None else actors
    if actors is None:
        raise ValueError("max_actors is None (as many as fit): pass the planned number of actors")
    if actors < 1:
        raise ValueError(f"an actor pool needs at least 1 actor, got {actors}")
    # More in flight lets the first actor that is ready take every batch of a small job.
    pool = ray.data.ActorPoolStrategy(min_size=1, max_size=actors, initial_size=actors,
                                      max_tasks_in_flight_per_actor=in_flight)
    return {"compute": pool, "num_cpus": resources.num_cpus, "num_gpus": resources.num_gpus,
            "batch_size": resources.batch_size, "batch_format": "numpy"}
    # Ray Data's own defaults do the rest: actors lost with a node are restarted and their batches
    # retried, and actors are spread over the nodes (DataContext.scheduling_strategy is SPREAD).
