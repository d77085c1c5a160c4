"""Finding and reading weight files. The only place in operators/ that touches the file system."""

from __future__ import annotations

import os
from pathlib import Path

import torch

WEIGHTS_ENV = "MASKDEX_WEIGHTS"
DOWNLOAD_ENV = "MASKDEX_ALLOW_DOWNLOAD"
DEFAULT_WEIGHTS_DIR = Path.home() / ".cache" / "maskdex" / "weights"


class MissingWeightsError(FileNotFoundError):
    """A weight file that a preset needs is not where it was looked for."""


class BadCheckpointError(ValueError):
    """A weight file exists but is not a usable checkpoint for the chosen model."""


def weights_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The weights directory: an explicit argument, else $MASKDEX_WEIGHTS, else ~/.cache/maskdex/weights."""
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get(WEIGHTS_ENV):
        return Path(os.environ[WEIGHTS_ENV]).expanduser()
    return DEFAULT_WEIGHTS_DIR


def downloads_allowed() -> bool:
    return os.environ.get(DOWNLOAD_ENV, "").lower() in ("1", "true", "yes")


def locate(filename: str, what: str, directory: Path, source_hint: str) -> Path:
    """The path of `filename` in `directory`, or an error that says what is missing and where to put it."""
    path = directory / filename
    if path.is_file():
        return path
    raise MissingWeightsError(
        f"{what}: weight file {filename!r} not found at {path}. Put the file there ({source_hint}), "
        f"point --weights-dir or ${WEIGHTS_ENV} at the directory that holds it"
        + (", or set MASKDEX_ALLOW_DOWNLOAD=1 on a machine with internet access." if source_hint.startswith("hub") else ".")
    )


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
