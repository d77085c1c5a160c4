"""The one place that names model presets and builds their models.

A preset (`--models NAME`) picks one model of each kind: SAM 2 (masks), Alpha-CLIP (region and
text embeddings) and a dense CLIP (patch features for RNS). `tiny` builds seeded random-weight
models from configs, with no file and no download; every other preset loads real weights from the
weights directory (--weights-dir, $MASKDEX_WEIGHTS, or ~/.cache/maskdex/weights), or from the hub
where the library supports it and MASKDEX_ALLOW_DOWNLOAD=1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from maskdex.operators.registry.alpha_clip_checkpoint import load_alpha_clip_visual
from maskdex.operators.alpha_clip.encoder import AlphaCLIPEncoder
from maskdex.operators.alpha_clip.model import AlphaCLIP
from maskdex.operators.common.clip_models import TINY_CLIP_CONFIG, build_clip, clip_tokenizer
from maskdex.operators.dense.features import DenseCLIPFeatures
from maskdex.operators.dense.windows import WindowSpec, rns_windows
from maskdex.operators.sam2.fast_masks import FastSAM2MaskGenerator
from maskdex.operators.sam2.masks import MaskSettings, SAM2MaskGenerator
from maskdex.operators.registry.weights import (
    WEIGHTS_ENV,
    MissingWeightsError,
    check_state_dict,
    downloads_allowed,
    locate,
    missing_files,
    read_state_dict,
    weights_location,
)

_TINY_SAM2_OVERRIDES = (
    "++model.image_encoder.trunk.embed_dim=48",
    "++model.image_encoder.trunk.stages=[1,1,2,1]",
    "++model.image_encoder.trunk.global_att_blocks=[3]",
    "++model.image_encoder.trunk.window_spec=[8,4,8,4]",
    "++model.image_encoder.neck.backbone_channel_list=[384,192,96,48]",
)


@dataclass(frozen=True)
class SAM2Spec:
    name: str
    config: str  # a Hydra config name inside the sam2 package
    image_size: int = 1024
    checkpoint: str | None = None  # file name in the weights directory (the released name)
    hub_id: str | None = None
    overrides: tuple[str, ...] = ()
    mask_settings: MaskSettings = MaskSettings()


@dataclass(frozen=True)
class CLIPSpec:
    name: str
    arch: str | dict = field(hash=False)  # an open_clip model name, or a config dict for tiny
    clip_weights: str | None = None  # open_clip state dict (text tower and base visual tower)
    hub_pretrained: str | None = None  # open_clip's pretrained tag for the same weights
    alpha_checkpoint: str | None = None  # released Alpha-CLIP visual checkpoint (Alpha-CLIP only)
    seed: int = 0  # random-weight specs only: another seed is another model of the same shape


SAM2_PRESETS = {
    spec.name: spec
    for spec in (
        SAM2Spec("tiny", "configs/sam2.1/sam2.1_hiera_t.yaml", image_size=256, overrides=_TINY_SAM2_OVERRIDES,
                 # Random weights give scattered masks whose boxes all span the image: quality thresholds
                 # and box NMS would keep one mask, so keep them all and let the cap choose.
                 mask_settings=MaskSettings(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                                            box_nms_thresh=1.0, max_masks=8)),
        SAM2Spec("sam2.1-hiera-t", "configs/sam2.1/sam2.1_hiera_t.yaml", checkpoint="sam2.1_hiera_tiny.pt",
                 hub_id="facebook/sam2.1-hiera-tiny"),
        SAM2Spec("sam2.1-hiera-s", "configs/sam2.1/sam2.1_hiera_s.yaml", checkpoint="sam2.1_hiera_small.pt",
                 hub_id="facebook/sam2.1-hiera-small"),
        SAM2Spec("sam2.1-hiera-b+", "configs/sam2.1/sam2.1_hiera_b+.yaml", checkpoint="sam2.1_hiera_base_plus.pt",
                 hub_id="facebook/sam2.1-hiera-base-plus"),
        SAM2Spec("sam2.1-hiera-l", "configs/sam2.1/sam2.1_hiera_l.yaml", checkpoint="sam2.1_hiera_large.pt",
                 hub_id="facebook/sam2.1-hiera-large"),
    )
}

ALPHA_CLIP_PRESETS = {
    spec.name: spec
    for spec in (
        CLIPSpec("tiny", TINY_CLIP_CONFIG),
        # A second random-weight Alpha-CLIP (another seed): what tests and benchmarks re-embed a tiny
        # index with, as a user re-embeds with a newer checkpoint.
        CLIPSpec("alpha-clip-tiny-seed1", TINY_CLIP_CONFIG, seed=1),
        CLIPSpec("alpha-clip-b16", "ViT-B-16", "open_clip_ViT-B-16_openai.safetensors", "openai",
                 "clip_b16_grit+mim_fultune_4xe.pth"),
        CLIPSpec("alpha-clip-l14", "ViT-L-14", "open_clip_ViT-L-14_openai.safetensors", "openai",
                 "clip_l14_grit+mim_fultune_6xe.pth"),
        CLIPSpec("alpha-clip-l14-336", "ViT-L-14-336", "open_clip_ViT-L-14-336_openai.safetensors", "openai",
                 "clip_l14_336_grit_20m_4xe.pth"),
    )
}

DENSE_CLIP_PRESETS = {
    spec.name: spec
    for spec in (
        CLIPSpec("tiny", TINY_CLIP_CONFIG),
        CLIPSpec("maskclip-b16-laion2b", "ViT-B-16", "open_clip_ViT-B-16_laion2b_s34b_b88k.safetensors",
                 "laion2b_s34b_b88k"),
    )
}


@dataclass(frozen=True)
class ModelPreset:
    name: str
    sam2: SAM2Spec
    alpha_clip: CLIPSpec
    dense_clip: CLIPSpec

    @property
    def fingerprint(self) -> str:
        """What produced an index: stored with every table, compared before any append or search."""
        return f"{self.name}(sam2={self.sam2.name},alpha_clip={self.alpha_clip.name},dense={self.dense_clip.name})"


PRESETS = {
    preset.name: preset
    for preset in (
        ModelPreset("tiny", SAM2_PRESETS["tiny"], ALPHA_CLIP_PRESETS["tiny"], DENSE_CLIP_PRESETS["tiny"]),
        # tiny's SAM 2 with another random Alpha-CLIP: `maskdex reembed --from TINY_DB --models tiny-seed1`.
        ModelPreset("tiny-seed1", SAM2_PRESETS["tiny"], ALPHA_CLIP_PRESETS["alpha-clip-tiny-seed1"],
                    DENSE_CLIP_PRESETS["tiny"]),
        ModelPreset("fast", SAM2_PRESETS["sam2.1-hiera-t"], ALPHA_CLIP_PRESETS["alpha-clip-b16"],
                    DENSE_CLIP_PRESETS["maskclip-b16-laion2b"]),
        ModelPreset("base", SAM2_PRESETS["sam2.1-hiera-b+"], ALPHA_CLIP_PRESETS["alpha-clip-l14"],
                    DENSE_CLIP_PRESETS["maskclip-b16-laion2b"]),
        ModelPreset("large", SAM2_PRESETS["sam2.1-hiera-l"], ALPHA_CLIP_PRESETS["alpha-clip-l14-336"],
                    DENSE_CLIP_PRESETS["maskclip-b16-laion2b"]),
    )
}


def get_preset(name: str) -> ModelPreset:
    """A named preset, or 'SAM2+ALPHACLIP' (e.g. 'sam2.1-hiera-s+alpha-clip-b16') for any other pairing."""
    if name in PRESETS:
        return PRESETS[name]
    sam2_name, plus, alpha_name = name.partition("+alpha-clip")
    alpha_name = "alpha-clip" + alpha_name
    if plus and sam2_name in SAM2_PRESETS and alpha_name in ALPHA_CLIP_PRESETS:
        return ModelPreset(name, SAM2_PRESETS[sam2_name], ALPHA_CLIP_PRESETS[alpha_name],
                           DENSE_CLIP_PRESETS["maskclip-b16-laion2b"])
    raise ValueError(
        f"unknown model preset {name!r}: choose one of {', '.join(PRESETS)}, or pair a SAM 2 model "
        f"({', '.join(n for n in SAM2_PRESETS if n != 'tiny')}) with an Alpha-CLIP model "
        f"({', '.join(n for n in ALPHA_CLIP_PRESETS if n != 'tiny')}) as 'SAM2+ALPHACLIP'"
    )


def preset_from_fingerprint(fingerprint: str) -> ModelPreset:
    """The preset whose fingerprint an index stores; a ValueError when this version defines it otherwise."""
    preset = get_preset(fingerprint.split("(", 1)[0])
    if preset.fingerprint != fingerprint:
        raise ValueError(f"the index was built by {fingerprint!r}, which this maskdex version defines as "
                         f"{preset.fingerprint!r}")
    return preset


# The models a preset is made of, by the name of their ModelPreset field; each job builds only some.
MODEL_PARTS = ("sam2", "alpha_clip", "dense_clip")


@dataclass(frozen=True)
class WeightFile:
    """One file a preset's model loads from the weights directory."""

    filename: str  # the released name
    what: str
    hub: bool  # maskdex can download it (with MASKDEX_ALLOW_DOWNLOAD=1) when it is missing


def weight_files(preset: str | ModelPreset, parts=MODEL_PARTS) -> list[WeightFile]:
    """The weight files the given parts of a preset load (none for tiny), in the order they load."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    files = []
    if "sam2" in parts and preset.sam2.checkpoint:
        files.append(WeightFile(preset.sam2.checkpoint, f"SAM 2 {preset.sam2.name}", preset.sam2.hub_id is not None))
    for part, spec, kind in (("alpha_clip", preset.alpha_clip, "CLIP of Alpha-CLIP"),
                             ("dense_clip", preset.dense_clip, "dense CLIP")):
        if part in parts and spec.clip_weights:
            files.append(WeightFile(spec.clip_weights, f"{kind} {spec.name}", bool(spec.hub_pretrained)))
        if part in parts and spec.alpha_checkpoint:
            files.append(WeightFile(spec.alpha_checkpoint, f"Alpha-CLIP {spec.name}", False))
    return files


def missing_weights(preset: str | ModelPreset, weights: str | os.PathLike | None = None,
                    parts=MODEL_PARTS) -> list[tuple[WeightFile, str]]:
    """(file, the path it was looked for at) of each weight file the parts need that is not there and
    will not be downloaded; a job checks this before it starts anything (require_weights)."""
    files = [file for file in weight_files(preset, parts) if not (file.hub and downloads_allowed())]
    looked_at = missing_files([file.filename for file in files], weights)
    return [(file, looked_at[file.filename]) for file in files if file.filename in looked_at]


def require_weights(preset: str | ModelPreset, weights: str | os.PathLike | None = None, parts=MODEL_PARTS) -> None:
    """One MissingWeightsError naming every weight file the parts need that is missing, and where each was looked for."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    missing = missing_weights(preset, weights, parts)
    if not missing:
        return
    source = "--weights-dir" if weights else (f"${WEIGHTS_ENV}" if os.environ.get(WEIGHTS_ENV) else "the default")
    lines = [f"preset {preset.name!r} needs {len(missing)} weight file{'s' if len(missing) > 1 else ''} that "
             f"{'are' if len(missing) > 1 else 'is'} not in the weights directory {weights_location(weights)} ({source}):"]
    for file, path in missing:
        where = ("MASKDEX_ALLOW_DOWNLOAD=1 downloads it" if file.hub
                 else "get it from the model's release page")
        lines.append(f"  missing {path}  ({file.what}; {where})")
    lines.append(f"Put the files there, or point --weights-dir or ${WEIGHTS_ENV} at the directory or object-store URI that holds them.")
    raise MissingWeightsError("\n".join(lines))


KEEP_SAM2 = "keep+"


def reembed_preset(name: str, source_fingerprint: str) -> ModelPreset:
    """The preset a re-embed of an index built by source_fingerprint writes with: `name` must pair the
    source's SAM 2 (the masks are the source's) with another Alpha-CLIP. Either a preset whose SAM 2
    is the source's (`tiny-seed1` for a `tiny` index), or 'keep+ALPHACLIP' (e.g.
    'keep+alpha-clip-l14'), which pairs the source's SAM 2 with that Alpha-CLIP."""
    source = preset_from_fingerprint(source_fingerprint)
    if name.startswith(KEEP_SAM2):
        alpha = name[len(KEEP_SAM2):]
        if alpha not in ALPHA_CLIP_PRESETS or not alpha.startswith("alpha-clip"):
            raise ValueError(f"{name!r}: after 'keep+' name an Alpha-CLIP model "
                             f"({', '.join(n for n in ALPHA_CLIP_PRESETS if n.startswith('alpha-clip'))})")
        preset = get_preset(f"{source.sam2.name}+{alpha}")
    else:
        preset = get_preset(name)
        if preset.sam2.name != source.sam2.name:
            raise ValueError(f"preset {name!r} masks with SAM 2 {preset.sam2.name!r}, but the source index's masks "
                             f"came from {source.sam2.name!r}: name a preset with that SAM 2, or "
                             f"'keep+{preset.alpha_clip.name if preset.alpha_clip.name.startswith('alpha-clip') else 'ALPHACLIP'}'")
    if preset.alpha_clip.name == source.alpha_clip.name:
        raise ValueError(f"the source index was embedded with Alpha-CLIP {source.alpha_clip.name!r} already: "
                         f"name another one to re-embed with")
    return preset


def build_sam2_model(spec: SAM2Spec, weights: str | os.PathLike | None = None):
    """The SAM 2 network of a spec, with its released weights loaded (random and seeded for tiny)."""
    from sam2.build_sam import build_sam2  # importing sam2 initialises Hydra; only do it when needed

    checkpoint = None
    if spec.checkpoint is not None:
        checkpoint = _weight_file(spec.checkpoint, f"SAM 2 preset {spec.name!r}", weights,
                                  hub=(spec.hub_id, spec.checkpoint) if spec.hub_id else None)
    overrides = [f"++model.image_size={spec.image_size}", *spec.overrides]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_sam2(spec.config, ckpt_path=None, device="cpu", hydra_overrides_extra=overrides)
    if checkpoint is not None:
        load_sam2_checkpoint(model, checkpoint)
    return model.eval()


def load_sam2_checkpoint(model, path: str | os.PathLike) -> None:
    """Released SAM 2 checkpoints are {'model': state_dict}; anything that does not fit is one clear error."""
    loaded = read_state_dict(path)
    state_dict = loaded.get("model", loaded)
    check_state_dict(model.state_dict(), state_dict, str(path))
    model.load_state_dict(state_dict, strict=True)


def build_clip_model(spec: CLIPSpec, weights: str | os.PathLike | None = None):
    """An open_clip CLIP with QuickGELU where the weights were trained with it, and its weights loaded."""
    quick_gelu = spec.hub_pretrained in (None, "openai")
    model = build_clip(spec.arch, quick_gelu=quick_gelu, seed=spec.seed)
    if spec.clip_weights is not None:
        import open_clip

        hub = None
        if spec.hub_pretrained:
            hub = ("open_clip", open_clip.get_pretrained_cfg(spec.arch, spec.hub_pretrained))
        path = _weight_file(spec.clip_weights, f"CLIP weights of preset {spec.name!r}", weights, hub=hub)
        state_dict = read_state_dict(path)
        check_state_dict(model.state_dict(), state_dict, str(path))
        model.load_state_dict(state_dict, strict=True)
    return model


def build_alpha_clip(spec: CLIPSpec, weights: str | os.PathLike | None = None) -> AlphaCLIP:
    model = AlphaCLIP(build_clip_model(spec, weights), alpha_init="random" if spec.alpha_checkpoint is None else "zeros",
                      seed=spec.seed)
    if spec.alpha_checkpoint is not None:
        path = _weight_file(spec.alpha_checkpoint, f"Alpha-CLIP checkpoint of preset {spec.name!r}", weights, hub=None)
        load_alpha_clip_visual(model, path)
    return model


AMG_CHOICES = ("fast", "stock")  # automatic mask generators: maskdex's batched one, sam2's own


def mask_generator(preset: str | ModelPreset, *, weights: str | os.PathLike | None = None, device="auto",
                   dtype: str | None = "bfloat16", amg: str = "fast",
                   **settings) -> SAM2MaskGenerator | FastSAM2MaskGenerator:
    """The preset's SAM 2 mask generator; keyword settings override the preset's MaskSettings.
    amg: 'fast' (FastSAM2MaskGenerator) or 'stock' (sam2's SAM2AutomaticMaskGenerator): the same masks."""
    if amg not in AMG_CHOICES:
        raise ValueError(f"unknown mask generator {amg!r}: choose one of {', '.join(AMG_CHOICES)}")
    preset = get_preset(preset) if isinstance(preset, str) else preset
    require_weights(preset, weights, ("sam2",))
    spec = preset.sam2
    generator = FastSAM2MaskGenerator if amg == "fast" else SAM2MaskGenerator
    return generator(build_sam2_model(spec, weights), spec.mask_settings.replace(**settings), device=device, dtype=dtype)


def alpha_clip_encoder(preset: str | ModelPreset, *, weights: str | os.PathLike | None = None, device="auto",
                       dtype: str | None = "bfloat16", **options) -> AlphaCLIPEncoder:
    preset = get_preset(preset) if isinstance(preset, str) else preset
    require_weights(preset, weights, ("alpha_clip",))
    spec = preset.alpha_clip
    return AlphaCLIPEncoder(build_alpha_clip(spec, weights), clip_tokenizer(spec.arch), device=device, dtype=dtype,
                            **options)


def _weight_file(filename: str, what: str, weights: str | os.PathLike | None, hub) -> str:
    hint = "not downloadable by maskdex: get it from the model's release page"
    if hub is not None:
        hint = "hub download available"
    try:
        return str(locate(filename, what, weights, hint))
    except MissingWeightsError:
        if hub is None or not downloads_allowed():
            raise
    source, ref = hub
    if source == "open_clip":
        import open_clip

        return open_clip.download_pretrained(ref)
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo_id=source, filename=ref)


def embedding_dim(spec: CLIPSpec) -> int:
    """The embedding size of a CLIP spec, known without building the model."""
    if isinstance(spec.arch, dict):
        return int(spec.arch["embed_dim"])
    import open_clip

    return int(open_clip.get_model_config(spec.arch)["embed_dim"])


def patch_size(spec: CLIPSpec) -> int:
    """The visual patch size of a CLIP spec, known without building the model."""
    if isinstance(spec.arch, dict):
        return int(spec.arch["vision_cfg"]["patch_size"])
    import open_clip

    return int(open_clip.get_model_config(spec.arch)["vision_cfg"]["patch_size"])


def native_input_size(spec: CLIPSpec) -> int:
    """The visual tower's own input size in pixels, known without building the model."""
    if isinstance(spec.arch, dict):
        size = spec.arch["vision_cfg"]["image_size"]
    else:
        import open_clip

        size = open_clip.get_model_config(spec.arch)["vision_cfg"]["image_size"]
    return int(size if isinstance(size, int) else size[0])


def dense_windows(preset: str | ModelPreset, short_side: int | None = None) -> tuple[WindowSpec, WindowSpec]:
    """(test, support) windows of the preset's dense CLIP: the one RNS window-and-resize policy
    (maskdex.operators.dense.windows), the paper's for ViT-B/16; short_side rescales it."""
    spec = (get_preset(preset) if isinstance(preset, str) else preset).dense_clip
    return rns_windows(native_input_size(spec), patch_size(spec), short_side)


def dense_feature_extractor(preset: str | ModelPreset, *, weights: str | os.PathLike | None = None, device="auto",
                            dtype: str | None = "bfloat16", short_side: int | None = None, **options):
    """The preset's MaskCLIP dense feature extractor for RNS, with the preset's windows (dense_windows)
    unless test_windows / support_windows are given; other keyword options go to DenseCLIPFeatures."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    require_weights(preset, weights, ("dense_clip",))
    spec = preset.dense_clip
    if "test_windows" not in options or "support_windows" not in options:
        test_windows, support_windows = dense_windows(preset, short_side)
        options.setdefault("test_windows", test_windows)
        options.setdefault("support_windows", support_windows)
    return DenseCLIPFeatures(build_clip_model(spec, weights), clip_tokenizer(spec.arch), device=device, dtype=dtype,
                             **options)
