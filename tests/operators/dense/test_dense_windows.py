"""The RNS window-and-resize policy: the authors' resize, padding and window averaging, on hand-made inputs."""

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data

from maskdex.operators.common.clip_models import CLIP_MEAN, CLIP_STD
from maskdex.operators.dense.features import SUPPORT_WINDOWS, TEST_WINDOWS, DenseFeatures, patch_tokens
from maskdex.operators.dense.windows import (
    WindowSpec,
    average_windows,
    padded_size,
    rescaled_size,
    resize_labels,
    resize_rgb,
    rns_windows,
    window_starts,
)
from maskdex.operators.registry.presets import dense_feature_extractor, dense_windows


@pytest.fixture(scope="module")
def extractor():
    return dense_feature_extractor("tiny", device="cpu", dtype=None)


def test_each_window_is_normalised_before_overlapping_windows_are_averaged():
    # two 1x2 windows on a 1x3 grid, overlapping on the middle patch
    first = torch.tensor([[[3.0, 4.0], [0.0, 2.0]]])
    second = torch.tensor([[[1.0, 0.0], [0.0, 5.0]]])
    got = average_windows((1, 3), [[((0, 0), first), ((0, 1), second)]])
    # normalised: first -> (0.6, 0.8), (0, 1); second -> (1, 0), (0, 1)
    expected = F.normalize(torch.tensor([[[0.6, 0.8], [0.5, 0.5], [0.0, 1.0]]]), dim=-1)
    torch.testing.assert_close(got, expected)
    # averaging the raw features first would give the middle patch normalise((0.5, 1)), not (0.71, 0.71)
    assert not torch.allclose(got[0, 1], F.normalize(torch.tensor([0.5, 1.0]), dim=0), atol=1e-3)


def test_support_features_average_each_window_size_then_the_sizes():
    # one 1x3 window pointing to (1, 0); two 1x2 windows (the second size) pointing to (0, 1)
    large = [((0, 0), torch.tensor([[[5.0, 0.0]] * 3]).reshape(1, 3, 2))]
    small = [((0, 0), torch.tensor([[[0.0, 2.0], [0.0, 2.0]]])), ((0, 1), torch.tensor([[[0.0, 7.0], [0.0, 7.0]]]))]
    got = average_windows((1, 3), [large, small])
    # every patch: mean((1, 0), (0, 1)) -> normalised (0.71, 0.71), however many small windows cover it
    torch.testing.assert_close(got, F.normalize(torch.ones(1, 3, 2), dim=-1))
    # pooling all three windows of the middle patch into one mean would give (1/3, 2/3)
    pooled = F.normalize(torch.tensor([1.0, 2.0]) / 3, dim=0)
    assert not torch.allclose(got[0, 1], pooled, atol=1e-3)
    with pytest.raises(ValueError, match="covered by no window"):
        average_windows((1, 4), [large])
    with pytest.raises(ValueError, match="leaves the grid"):
        average_windows((1, 2), [large])
    with pytest.raises(ValueError, match="at least one window"):
        average_windows((1, 3), [large, []])


def test_the_paper_policy_and_its_scaled_versions():
    assert TEST_WINDOWS == WindowSpec(448, (448,), 224, 2048)
    assert SUPPORT_WINDOWS == WindowSpec(448, (448, 224), 112, 2048)
    assert rns_windows(224, 16) == (TEST_WINDOWS, SUPPORT_WINDOWS)  # ViT-B/16: exactly the paper's
    assert rns_windows(224, 14)[0] == TEST_WINDOWS  # ViT-L/14 as well: 448, 224 and 112 are whole patches
    # the tiny preset (64-pixel input, 8-pixel patches): the paper's scheme scaled by 64 / 224
    tiny_test, tiny_support = dense_windows("tiny")
    assert tiny_test == WindowSpec(128, (128,), 64, 585) and tiny_support == WindowSpec(128, (128, 64), 32, 585)
    # a short side rescales every size; eval and segment share this one function
    assert dense_windows("tiny", 64) == (WindowSpec(64, (64,), 32, 293), WindowSpec(64, (64, 32), 16, 293))
    with pytest.raises(ValueError, match="whole numbers of 8-pixel patches"):
        dense_windows("tiny", 60)


def test_a_300x405_image_gets_the_official_size_grid_and_windows():
    # configs/clip.yaml scale (2048, 448), keep_ratio: 300x405 -> 448x605 (604.8 rounded half up)
    assert rescaled_size(300, 405, TEST_WINDOWS) == (448, 605)
    assert rescaled_size(405, 300, SUPPORT_WINDOWS) == (605, 448)
    assert padded_size(448, 605, 16) == (448, 608)  # make_input_divisible: 3 columns of padding
    # test windows: one row, two columns (the last flush with the padded edge)
    assert window_starts(448, 448, 224) == [0] and window_starts(608, 448, 224) == [0, 160]
    # support windows of 224 every 112
    assert window_starts(608, 224, 112) == [0, 112, 224, 336, 384]
    # the long side is capped at 2048: the short side then falls below the window, which is clipped
    assert rescaled_size(100, 1000, TEST_WINDOWS) == (205, 2048)
    assert padded_size(205, 2048, 16) == (208, 2048)
    assert window_starts(208, 448, 224) == [0]
    # small images are enlarged to the short side
    assert rescaled_size(20, 30, TEST_WINDOWS) == (448, 672)


def _odd_photos():
    """Real photos of odd sizes, both orientations, and one wide enough to hit the 2048 (tiny: 585) cap."""
    wide = np.concatenate([data.coffee()[:201], data.rocket()[:201, :599]], axis=1)  # 201x1199
    return [data.chelsea()[:299, :405], data.astronaut()[:301, :211], data.coffee()[:397, :591], wide]


@pytest.mark.parametrize("spec", [TEST_WINDOWS, dense_windows("tiny")[0]], ids=["paper", "tiny"])
def test_resizing_is_opencvs_own_on_every_pixel_of_real_photos(spec):
    for photo in _odd_photos():
        size = rescaled_size(*photo.shape[:2], spec)
        got = resize_rgb(photo, size)
        assert got.dtype == torch.uint8 and tuple(got.shape) == (3, *size)
        expected = cv2.resize(photo, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_array_equal(got.permute(1, 2, 0).numpy(), expected)
        # bilinear in float, rounded, is not it: cv2's fixed point moves some pixels a grey level
        in_float = F.interpolate(torch.from_numpy(photo).permute(2, 0, 1)[None].float(), size=size,
                                 mode="bilinear", align_corners=False)
        in_float = in_float.add(0.5).floor().clamp(0, 255)[0].permute(1, 2, 0).numpy()
        assert (in_float != expected).mean() > 0.01
    # the same size is left as it is
    photo = _odd_photos()[0]
    np.testing.assert_array_equal(resize_rgb(photo, photo.shape[:2]).permute(1, 2, 0).numpy(), photo)
    with pytest.raises(ValueError, match="uint8 image"):
        resize_rgb(photo.astype(np.float32), (10, 10))


@pytest.mark.parametrize("dtype", [np.uint8, np.int64, bool])
def test_labels_are_resized_by_opencvs_nearest_in_any_dtype(dtype):
    photo = data.chelsea()[:299, :405]
    labels = (photo[..., 0] // 37).astype(dtype)  # 7 bands of a real photo's red channel
    size = rescaled_size(*labels.shape, TEST_WINDOWS)
    got = resize_labels(labels, size)
    assert got.numpy().dtype == np.dtype(dtype) and tuple(got.shape) == size
    expected = cv2.resize(labels.astype(np.uint8), (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
    np.testing.assert_array_equal(got.numpy().astype(np.uint8), expected)
    # nearest takes source row floor(y * H / h): no new label values appear
    assert set(np.unique(got.numpy())) <= set(np.unique(labels))
    small = np.arange(16, dtype=dtype if dtype is not bool else np.uint8).reshape(4, 4)
    assert resize_labels(torch.from_numpy(small[:2, :2]), (3, 3)).tolist() == [[0, 0, 1], [0, 0, 1], [4, 4, 5]]
    with pytest.raises(ValueError, match=r"\(H, W\) label map"):
        resize_labels(photo, (10, 10))


def test_labels_are_resized_and_padded_with_255():
    dense = DenseFeatures(torch.zeros(2, 3, 4), image_size=(3, 5), input_size=(16, 24), patch_size=8,
                          resized_size=(12, 20))
    labels = np.zeros((3, 5), dtype=np.uint8)
    labels[:, 4] = 1
    grid = dense.label_grid(labels)
    assert grid.shape == (16, 24)
    assert (grid[12:] == 255).all() and (grid[:, 20:] == 255).all()  # the padding is ignored
    assert set(grid[:12, :20].unique().tolist()) == {0, 1}
    assert (grid[:12, 16:20] == 1).all() and (grid[:12, :16] == 0).all()  # source column floor(x / 4)
    with pytest.raises(ValueError, match="label map is"):
        dense.label_grid(np.zeros((4, 5), dtype=np.uint8))


def _official_features(visual, image: np.ndarray, spec: WindowSpec, patch: int, pad_value: float) -> torch.Tensor:
    """The authors' procedure written out as their loops do it: mmcv's imrescale (the scale factor
    min(long / long side, short / short side), each side int(side * factor + 0.5), then cv2.resize
    INTER_LINEAR), pad with pad_value before normalising, windows of each size, each window normalised,
    per-size means, mean of the sizes, normalised."""
    height, width = image.shape[:2]
    factor = min(max(spec.long_side, spec.short_side) / max(height, width),
                 min(spec.long_side, spec.short_side) / min(height, width))
    new_w, new_h = int(width * float(factor) + 0.5), int(height * float(factor) + 0.5)
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    pixels = torch.from_numpy(resized).permute(2, 0, 1)[None].float() / 255
    pad_h, pad_w = (-new_h) % patch, (-new_w) % patch
    pixels = F.pad(pixels, (0, pad_w, 0, pad_h), value=pad_value)
    pixels = (pixels - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    h_img, w_img = pixels.shape[-2:]
    sums = []
    for crop in spec.windows:
        total = torch.zeros(h_img // patch, w_img // patch, visual.output_dim)
        count = torch.zeros(h_img // patch, w_img // patch, 1)
        h_grids = max(h_img - crop + spec.stride - 1, 0) // spec.stride + 1
        w_grids = max(w_img - crop + spec.stride - 1, 0) // spec.stride + 1
        for h_idx in range(h_grids):
            for w_idx in range(w_grids):
                y2, x2 = min(h_idx * spec.stride + crop, h_img), min(w_idx * spec.stride + crop, w_img)
                y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
                with torch.no_grad():
                    window = F.normalize(patch_tokens(visual, pixels[..., y1:y2, x1:x2])[0], dim=-1)
                total[y1 // patch : y2 // patch, x1 // patch : x2 // patch] += window
                count[y1 // patch : y2 // patch, x1 // patch : x2 // patch] += 1
        sums.append(total / count)
    return F.normalize(sum(sums) / len(sums), dim=-1)


@pytest.mark.parametrize("kind, shape", [("test", (300, 405)), ("test", (200, 1200)), ("support", (300, 405))])
def test_real_photos_through_the_extractor_match_the_official_procedure(extractor, kind, shape):
    wide = np.concatenate([data.coffee(), data.rocket()[:400]], axis=1)  # 400x1240
    image = np.ascontiguousarray(wide[: shape[0], : shape[1]])
    spec = extractor.test_windows if kind == "test" else extractor.support_windows
    dense = extractor.features(image, spec)
    visual = extractor.model.visual
    official = _official_features(visual, image, spec, 8, pad_value=0.0)
    assert dense.features.shape == official.shape
    assert (dense.features - official).abs().max() <= 1e-5
    if shape == (300, 405):
        # tiny: short side 128, so 300x405 -> 128x173, padded to 128x176 (8-pixel patches)
        assert dense.image_size == (300, 405) and dense.resized_size == (128, 173)
        assert dense.input_size == (128, 176) and dense.grid == (16, 22)
        # the pad value matters: padding with zeros after normalising (CLIP's mean) gives other features
        mean_padded = _official_features(visual, image, spec, 8, pad_value=CLIP_MEAN[0])
        assert (dense.features - mean_padded).abs().max() > 1e-3
    else:
        # tiny: the long side is capped at 585, 200x1200 -> 98x585
        assert dense.resized_size == (98, 585)
