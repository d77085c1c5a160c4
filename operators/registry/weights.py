"""Finding and reading weight files. With remote_weights.py (a weights directory in an object store),
the only place in operators/ that touches the file system."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from maskdex.operators.registry import remote_weights

WEIGHTS_ENV = "MASKDEX_WEIGHTS"
DOWNLOAD_ENV = "MASKDEX_ALLOW_DOWNLOAD"
DEFAULT_WEIGHTS_DIR = Path.home() / ".cache" / "maskdex" / "weights"


class MissingWeightsError(FileNotFoundError):
    """A weight file that a preset needs is not where it was looked for."""


class BadCheckpointError(ValueError):
    """A weight file exists but is not a usable checkpoint for the chosen model."""


def weights_location(explicit: str | os.PathLike | None = None) -> str:
    """Where the weights are: an explicit argument, else $MASKDEX_WEIGHTS, else ~/.cache/maskdex/weights.
    A local folder, or an object-store URI (s3://, gs://, file://) that each node copies from once."""
    location = explicit or os.environ.get(WEIGHTS_ENV) or DEFAULT_WEIGHTS_DIR
    return str(location) if remote_weights.is_remote(location) else str(Path(location).expanduser())


def weights_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The local weights folder: the weights location itself, or this node's cache of a remote one."""
    location = weights_location(explicit)
    return remote_weights.cache_dir(location) if remote_weights.is_remote(location) else Path(location)


def downloads_allowed() -> bool:
    return os.environ.get(DOWNLOAD_ENV, "").lower() in ("1", "true", "yes")


def locate(filename: str, what: str, weights: str | os.PathLike | None, source_hint: str) -> Path:
    """The local path of `filename` from the weights location (copied into this node's cache when the
    location is remote), or an error that says what is missing and where to put it."""
    location = weights_location(weights)
    if remote_weights.is_remote(location):
        path = remote_weights.cached_copy(location, filename)
        if path is not None:
            return path
    elif (Path(location) / filename).is_file():
        return Path(location) / filename
    raise MissingWeightsError(
        f"{what}: weight file {filename!r} not found at {_shown(location, filename)}. Put the file there "
        f"({source_hint}), point --weights-dir or ${WEIGHTS_ENV} at the directory or object-store URI that holds it"
        + (", or set MASKDEX_ALLOW_DOWNLOAD=1 on a machine with internet access." if source_hint.startswith("hub") else ".")
    )


def missing_files(filenames: list[str], weights: str | os.PathLike | None = None) -> dict[str, str]:
    """{filename: where it was looked for} of each of `filenames` that the weights location lacks.
    One listing call for a remote location; nothing is copied."""
    location = weights_location(weights)
    if remote_weights.is_remote(location):
        present = {name for name, size in remote_weights.remote_sizes(location, filenames).items() if size is not None}
    else:
        present = {name for name in filenames if (Path(location) / name).is_file()}
    return {name: _shown(location, name) for name in filenames if name not in present}


def _shown(location: str, filename: str) -> str:
    return f"{location.rstrip('/')}/{filename}" if remote_weights.is_remote(location) else str(Path(location) / filename)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A flat tensor dict from a .safetensors file or a torch checkpoint, loaded with weights_only=True."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated, foreign or unsafe pickle: say which file and why
        raise BadCheckpointError(f"cannot read checkpoint {path}: {type(error).__name__}: {error}") from error
    if not isinstance(loaded, dict):
        raise BadCheckpointError(f"checkpoint {path} holds a {type(loaded).__name__}, not a state dict")
    return loaded


def check_state_dict(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor], source: str) -> None:
    """Raise one error that lists every missing, unexpected and wrongly-shaped key."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    wrong_shape = sorted(
        f"{key}: checkpoint {tuple(given[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in set(expected) & set(given)
        if tuple(given[key].shape) != tuple(expected[key].shape)
    )
    if not (missing or unexpected or wrong_shape):
        return
    parts = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", wrong_shape)):
        if items:
            shown = ", ".join(items[:20]) + (f", ... ({len(items) - 20} more)" if len(items) > 20 else "")
            parts.append(f"{len(items)} {label}: {shown}")
    raise BadCheckpointError(f"checkpoint {source} does not fit the model: " + "; ".join(parts))
