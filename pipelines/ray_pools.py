"""What every Ray Data job here shares: joining Ray, and the actor pools that run the models."""

from __future__ import annotations

import os
from dataclasses import dataclass

import ray


@dataclass(frozen=True)
class StageResources:
    """Where one model stage runs: how many actors, and what each actor reserves.

    The pool autoscales between 1 and max_actors: a fixed size that no longer fits (a node lost,
    a busy cluster) would leave the job waiting forever for actors that cannot be placed.
    """

    max_actors: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    # Small batches: both models loop over images inside a batch anyway, and small batches stream
    # results to the writer sooner (less work lost to a kill, steadier progress).
    batch_size: int = 2


def init_ray(address: str | None) -> None:
    if not ray.is_initialized():
        # No address: the cluster this process was submitted to (RAY_ADDRESS), else a fresh local
        # instance, never whatever cluster happens to run on this machine.
        ray.init(address=address or os.environ.get("RAY_ADDRESS") or "local", log_to_driver=False)


def actor_pool(resources: StageResources) -> dict:
    """map_batches arguments for a model stage on an autoscaling actor pool."""
    if resources.max_actors < 1:
        raise ValueError(f"max_actors must be >= 1, got {resources.max_actors}")
    return {"compute": ray.data.ActorPoolStrategy(min_size=1, max_size=resources.max_actors),
            "num_cpus": resources.num_cpus, "num_gpus": resources.num_gpus, "batch_size": resources.batch_size,
            "batch_format": "numpy", "max_restarts": 2, "max_task_retries": 2,
            # Model actors spread over the nodes rather than packing the first one.
            "scheduling_strategy": "SPREAD"}
