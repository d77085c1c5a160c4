"""Few-shot segmentation of one image with a support set: RNS (design.md section 3) on patches or regions.

A Segmenter is long-lived (a Serve replica, a job actor): it holds the dense CLIP and the support
store, and checks the store's version at every call, so examples added by anyone apply at once.
Region mode takes its regions from the index when the image is indexed in the same database
(found by the sha256 of its file), and runs SAM 2 only otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from maskdex.operators.registry.options import ModelOptions
from maskdex.operators.common import rle as rle_codec
from maskdex.operators.dense.features import DenseFeatures, fill_unnamed
from maskdex.operators.registry.presets import mask_generator
from maskdex.operators.rns.method import RNSResult, RNSSettings, rns_segment_batch
from maskdex.operators.rns.memory import SupportMemory
from maskdex.operators.rns.units import TestUnits, dense_patch_units, dense_region_units
from maskdex.pipelines.common.decode import DEFAULT_MAX_PIXELS, resize_longest_side, to_original_size
from maskdex.pipelines.fewshot.dense import build_extractor, open_support_store
from maskdex.pipelines.common.images import load_image
from maskdex.pipelines.common.class_names import check_class_names
from maskdex.pipelines.fewshot.labels import has_text_name, text_names
from maskdex.pipelines.fewshot.request import MODES, uses_text
from maskdex.pipelines.fewshot.supports import add_example
from maskdex.storage.index_store import IndexStore
from maskdex.storage.schemas import OK
from maskdex.storage.support_store import SupportArrays

@dataclass(frozen=True)
class SegmentSettings(ModelOptions):
    rns: RNSSettings = RNSSettings()
    mask_settings: dict = field(default_factory=dict)  # overrides of the preset's SAM 2 MaskSettings
    max_side: int = 1024  # images are downscaled to this before SAM 2, as when indexing
    max_pixels: int = DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class SegmentResult:
    """labels[y, x] indexes class_names. used_fallback: no class had an example, so the labels are
    the zero-shot (text only) prediction. regions: where region mode got its regions ("index" or
    "sam2"); None in patch mode."""

    labels: np.ndarray
    class_names: tuple[str, ...]
    visual_support: tuple[str, ...]  # classes with examples in the set
    text_support: tuple[str, ...]  # classes whose name was used as text
    support_images: dict[str, int]
    used_fallback: bool
    pixel_fractions: dict[str, float]
    mode: str
    regions: str | None = None
    image_id: str | None = None

    @property
    def found(self) -> list[str]:
        """Classes that label at least one pixel, most pixels first."""
        return sorted((name for name, share in self.pixel_fractions.items() if share > 0),
                      key=lambda name: -self.pixel_fractions[name])

    def summary(self) -> dict:
        height, width = self.labels.shape
        return {"image_id": self.image_id, "width": width, "height": height, "mode": self.mode,
                "regions": self.regions, "classes": list(self.class_names), "found": self.found,
                "pixel_fractions": self.pixel_fractions, "visual_support": list(self.visual_support),
                "text_support": list(self.text_support), "support_images": self.support_images,
                "used_fallback": self.used_fallback}


@dataclass(frozen=True)
class SegmentCall:
    """The arguments of one Segmenter.segment call, for Segmenter.segment_many."""

    image: object
    set_name: str
    classes: list[str] | None = None
    mode: str = "patch"
    shots_only: bool = False
    seed: int = 0
    image_id: str | None = None

    @property
    def group(self) -> tuple:
        """Calls with the same group share their support memory and classes, so their heads train together."""
        return (self.set_name, None if self.classes is None else tuple(self.classes), self.mode, self.shots_only)


@dataclass(frozen=True)
class _Problem:
    supports: SupportArrays
    names: tuple[str, ...]
    named: list[bool] | None  # None when text is not used
    use_text: bool
    device: torch.device
    memory: SupportMemory
    text: torch.Tensor | None
    rns: RNSSettings

    def result(self, result: RNSResult, mode: str, regions: str | None, image_id: str) -> SegmentResult:
        names = self.names
        labels = result.labels.numpy().astype(np.uint8 if len(names) <= 256 else np.uint16)
        shares = np.bincount(labels.ravel(), minlength=len(names)) / labels.size
        visual = tuple(name for name, count in self.supports.images_per_class.items() if count)
        return SegmentResult(
            labels=labels, class_names=names, visual_support=visual,
            text_support=tuple(name for name in names if self.use_text and has_text_name(name)),
            support_images=self.supports.images_per_class, used_fallback=result.used_fallback,
            pixel_fractions={name: round(float(share), 6) for name, share in zip(names, shares)},
            mode=mode, regions=regions, image_id=image_id)


class Segmenter:
    """Segments images with the support sets of one database.

    create=True creates the database's supports table when it has none (a service that will add
    examples); otherwise a database without support sets is a FileNotFoundError.
    """

    def __init__(self, db: str, settings: SegmentSettings = SegmentSettings(), *, create: bool = False):
        self.db = db
        self.settings = settings
        self.store = open_support_store(db, settings.models, create=create)
        self.extractor = build_extractor(settings.models, weights=settings.weights, device=settings.device,
                                         dtype=settings.dtype)
        self._loaded: tuple[tuple, SupportArrays] | None = None
        self._text: dict[str, torch.Tensor] = {}
        self._masks = None  # SAM 2, built on the first image the index has no regions for
        self._index: IndexStore | None = None

    def segment(self, image, set_name: str, classes: list[str] | None = None, *, mode: str = "patch",
                shots_only: bool = False, seed: int = 0, image_id: str | None = None) -> SegmentResult:
        """Segment an image (path, file bytes, array or PIL image) into the classes of a support set.

        classes: the classes to tell apart, in the order of the label ids (default: all the set's,
        sorted); a class the set has no example of is segmented from its name alone. shots_only:
        RNS without text. image_id: the index's id (sha256 of the file) of an image given as pixels,
        for region mode to find its stored regions.
        """
        result = self.segment_many([SegmentCall(image, set_name, classes, mode, shots_only, seed, image_id)])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def segment_many(self, calls: Sequence[SegmentCall]) -> list[SegmentResult | Exception]:
        """segment() for many images; calls that share a support set, classes, mode and shots_only
        train their per-image heads together (rns_segment_batch), and each result equals that call's
        segment() result. A call that fails gets its exception in its place; the others go on."""
        results: list[SegmentResult | Exception | None] = [None] * len(calls)
        groups: dict[tuple, list[int]] = {}
        for index, call in enumerate(calls):
            groups.setdefault(call.group, []).append(index)
        for indices in groups.values():
            first = calls[indices[0]]
            try:
                problem = self._problem(first.set_name, first.classes, first.shots_only)
            except Exception as error:  # noqa: BLE001 - the group's callers each get the cause
                for index in indices:
                    results[index] = error
                continue
            images = []
            for index in indices:
                try:
                    images.append((index, self._image_units(calls[index], problem.device)))
                except Exception as error:  # noqa: BLE001 - one unreadable image fails only its own call
                    results[index] = error
            if not images:
                continue
            try:
                segmented = rns_segment_batch([units for _, (units, _, _) in images], problem.memory, problem.text,
                                              problem.rns, named=problem.named, n_classes=len(problem.names),
                                              seeds=[calls[index].seed for index, _ in images])
            except Exception as error:  # noqa: BLE001
                for index, _ in images:
                    results[index] = error
                continue
            for (index, (_, regions, image_id)), result in zip(images, segmented):
                results[index] = problem.result(result, calls[index].mode, regions, image_id)
        return results

    def _problem(self, set_name: str, classes: list[str] | None, shots_only: bool) -> _Problem:
        """What every image segmented with this set, classes and shots_only shares."""
        if classes is not None:
            classes = check_class_names(classes, where="classes")
        supports = self._supports(set_name, classes)
        names = supports.classes
        named = [has_text_name(name) for name in names]
        use_text = uses_text(supports, set_name, shots_only)
        # The per-image classifier trains where the model runs: on the GPU when there is one.
        device = self.extractor.device
        memory = SupportMemory(*(torch.from_numpy(array).to(device) for array in
                                 (supports.prototypes, supports.class_ids, supports.image_ids)))
        return _Problem(supports, names, named if use_text else None, use_text, device, memory,
                        self._text_features(names).to(device) if use_text else None,
                        self.settings.rns.replace(use_text=use_text))

    def _image_units(self, call: SegmentCall, device: torch.device) -> tuple[TestUnits, str | None, str]:
        if call.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {call.mode!r}")
        loaded = load_image(call.image, max_pixels=self.settings.max_pixels)
        image_id = call.image_id or loaded.file_id
        dense = self.extractor.test_features(loaded.rgb)
        if call.mode == "region":
            units, regions = self._region_units(dense, loaded.rgb, image_id)
            return units, regions, image_id
        return dense_patch_units(dense, device), None, image_id

    def add_example(self, set_name: str, image, label_map, class_names: list[str], *, uri: str | None = None) -> dict:
        """maskdex.pipelines.fewshot.supports.add_example with this segmenter's store and dense CLIP."""
        return add_example(self.store, set_name, image, label_map, class_names, extractor=self.extractor, uri=uri)

    def _supports(self, set_name: str, classes: list[str] | None) -> SupportArrays:
        # Loading is a scan of the set; reuse it while no write has happened since.
        key = (self.store.version, set_name, None if classes is None else tuple(classes))
        if self._loaded is None or self._loaded[0] != key:
            self._loaded = (key, self.store.load(set_name, classes))
        return self._loaded[1]

    def _text_features(self, names: tuple[str, ...]) -> torch.Tensor:
        texts = text_names(names)
        named = [text for text in texts if text is not None]
        missing = [text for text in named if text not in self._text]
        if missing:  # 80 prompts per class: worth keeping
            self._text.update(zip(missing, self.extractor.class_text_features(missing)))
        return fill_unnamed(torch.stack([self._text[text] for text in named]), [text is not None for text in texts])

    def _region_units(self, dense: DenseFeatures, rgb: np.ndarray, image_id: str | None) -> tuple[TestUnits, str]:
        size = rgb.shape[:2]
        rles, source = self._indexed_regions(image_id, size), "index"
        if rles is None:
            if self._masks is None:
                self._masks = mask_generator(self.settings.models, weights=self.settings.weights,
                                             device=self.settings.device, dtype=self.settings.dtype,
                                             **self.settings.mask_settings)
            working = resize_longest_side(rgb, self.settings.max_side)
            rles = [to_original_size({"rle": region.rle}, size)["rle"] for region in self._masks.generate(working)]
            source = "sam2"
        masks = np.zeros((len(rles), *size), dtype=bool)
        for index, rle in enumerate(rles):
            masks[index] = rle_codec.decode(rle)
        return dense_region_units(dense, torch.from_numpy(masks), self.extractor.device), source

    def _indexed_regions(self, image_id: str | None, size: tuple[int, int]) -> list[dict] | None:
        """The stored region masks of an indexed image, or None when the index has none for it."""
        if image_id is None:
            return None
        if self._index is None:
            try:
                self._index = IndexStore.open(self.db, fingerprint=None, embed_dim=None, read_only=True)
            except FileNotFoundError:  # no index in this database (yet)
                return None
        row = self._index.image(image_id)
        if row is None or row["status"] != OK:
            return None
        rles = [region["rle"] for region in self._index.regions_of(image_id)]
        if any(list(rle["size"]) != list(size) for rle in rles):
            return None
        return rles
