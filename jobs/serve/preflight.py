"""What a service config needs, checked where it is deployed before Ray starts or anything deploys.

`maskdex serve` runs it before starting Ray, and `build_app` (the import path of a Serve config and the
RayService) before it builds the application, so a config that cannot work fails in seconds with every
problem named (ServicePreflightError, a ValueError: `maskdex serve` exits 2) instead of replicas that
fail one at a time in their constructors, with the cause in Ray's log files.

Checked: the weight files of the config's preset and of the preset that built the database (the text
encoder's), the database itself when it is a local path, and the re-ranker's checkpoint folder and key.
An object-store weights URI is listed (one call) where this host can; an object-store database is left
to the replicas: it may need the cluster's credentials.
"""

from __future__ import annotations

import os
from pathlib import Path

from maskdex.jobs.console import terminal
from maskdex.jobs.serve.config import ServiceConfig


class ServicePreflightError(ValueError):
    """Everything that stops the service from starting, one problem per line."""


def check_service(config: ServiceConfig) -> None:
    settings = config.maskdex
    problems: list[str] = []
    presets = [settings.preset]
    database_preset = _database_preset(settings.db, problems)
    if database_preset is not None and database_preset not in presets:
        presets.append(database_preset)
    for preset in presets:
        problems.extend(_missing_weights(preset, settings.weights, database=preset == database_preset))
    if settings.rerank is not None:
        problems.extend(_rerank_problems(config))
    if problems:
        raise ServicePreflightError("the service cannot start:\n" + "\n".join(f"  - {p}" for p in problems))


def is_uri(location: str | None) -> bool:
    return location is not None and "://" in location


def _database_preset(db: str, problems: list[str]) -> str | None:
    """The name of the preset that built a local database (None for a URI, or after a problem)."""
    if is_uri(db):
        return None
    from maskdex.operators.registry.presets import preset_from_fingerprint
    from maskdex.storage.index_store import IndexStore

    path = Path(db).expanduser()
    if not path.is_dir():  # looked at before opening: opening a folder that is not there creates it
        problems.append(f"database {db}: no such directory (build one with `maskdex index ... --db {db}`)")
        return None
    try:
        store = IndexStore.open(str(path), fingerprint=None, embed_dim=None, read_only=True)
        return preset_from_fingerprint(store.fingerprint).name
    except (FileNotFoundError, ValueError) as error:
        problems.append(f"database {db}: {error}")
        return None


def _missing_weights(preset: str, weights: str | None, *, database: bool) -> list[str]:
    from maskdex.operators.registry.presets import missing_weights
    from maskdex.operators.registry.weights import WEIGHTS_ENV, weights_location

    try:
        missing = missing_weights(preset, weights)
    except ValueError as error:  # an unknown preset name
        return [f"maskdex.preset: {error}"]
    except OSError as error:  # an object store this host cannot list (its credentials may be the workers' only)
        print(f"maskdex serve: the weights at {weights_location(weights)} could not be listed from this host "
              f"({type(error).__name__}: {error}); not checked here, the replicas will look for them",
              file=terminal())  # not stderr: a quiet `maskdex serve` sends that to its log file
        return []
    if not missing:
        return []
    source = ("maskdex.weights" if weights else f"${WEIGHTS_ENV}" if os.environ.get(WEIGHTS_ENV)
              else f"the default; set maskdex.weights or ${WEIGHTS_ENV}")
    role = "the database's preset" if database else "maskdex.preset"
    lines = [f"{role} {preset!r} needs {len(missing)} weight file(s) not found in "
             f"{weights_location(weights)} ({source}):"]
    lines += [f"    {path}" for _, path in missing]
    lines.append("    `maskdex presets` lists each preset's files; the README's 'Model presets and weights' "
                 "says where to get them")
    return ["\n".join(lines)]


def _rerank_problems(config: ServiceConfig) -> list[str]:
    from maskdex.operators.registry.rerankers import qwen25_vl_dir
    from maskdex.operators.registry.weights import MissingWeightsError, downloads_allowed

    rerank = config.maskdex.rerank
    try:
        settings = rerank.settings()
    except ValueError as error:
        return [f"maskdex.rerank: {error}"]
    if settings.backend != "transformers" or settings.model == "tiny" or downloads_allowed():
        return []
    if is_uri(config.maskdex.weights):
        return []
    try:
        qwen25_vl_dir(settings.model, config.maskdex.weights)
    except (MissingWeightsError, ValueError) as error:
        return [f"maskdex.rerank: {error}"]
    return []
