"""What a few-shot segmentation run is asked for (SegmentSpec), and the one check of it before any image.

`maskdex segment`, `segment-index` and both Ray jobs share them. The service's ingress reads MODES
and stays free of torch, so the check imports the model registry and the stores only when it runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from maskdex.pipelines.fewshot.labels import has_text_name

if TYPE_CHECKING:
    from maskdex.pipelines.fewshot.segmenter import SegmentSettings
    from maskdex.storage.support_store import SupportArrays

MODES = ("patch", "region")  # RNS classifies patches, or SAM 2 regions (design.md section 3)


@dataclass(frozen=True)
class SegmentSpec:
    """One support set's classes (all of the set's, sorted, when None), the mode, text or not, the seed."""

    set_name: str
    classes: tuple[str, ...] | None = None
    mode: str = "patch"
    shots_only: bool = False
    seed: int = 0

    @property
    def class_list(self) -> list[str] | None:
        return None if self.classes is None else list(self.classes)


def check_spec(db: str, settings: SegmentSettings, spec: SegmentSpec) -> SupportArrays:
    """Fail once, before any image, on what would fail them all: no database, no such set, another
    model, classes that cannot be predicted. Returns the supports it loaded, so the caller need not
    load the set again (their classes are the spec's, or all of the set's)."""
    from maskdex.operators.registry.presets import require_weights
    from maskdex.pipelines.common.class_names import check_class_names
    from maskdex.pipelines.fewshot.dense import open_support_store

    if spec.mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {spec.mode!r}")
    classes = None if spec.classes is None else check_class_names(spec.classes, where="classes")
    require_weights(settings.models, settings.weights, ("dense_clip",))
    supports = open_support_store(db, settings.models, create=False).load(spec.set_name, classes)
    uses_text(supports, spec.set_name, spec.shots_only)
    return supports


def uses_text(supports: SupportArrays, set_name: str, shots_only: bool) -> bool:
    """Whether RNS gets text features for these classes. A ValueError names the classes it could
    never predict: those with no example in the set and no text (shots-only, or an '@' name)."""
    use_text = not shots_only and any(has_text_name(name) for name in supports.classes)
    counts = supports.images_per_class
    blind = [name for name in supports.classes if not counts[name] and not (use_text and has_text_name(name))]
    if blind:
        why = "shots-only leaves text out" if shots_only else "'@' classes have no name for text"
        raise ValueError(f"support set {set_name!r} has no example of {', '.join(map(repr, blind))} and {why}: "
                         f"they cannot be predicted")
    return use_text
