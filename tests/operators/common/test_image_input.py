import numpy as np
import pytest
from PIL import Image

from maskdex.operators.common.image_input import BadImageError, as_rgb_uint8


def test_rgb_uint8_passes_through_unchanged(photos):
    out = as_rgb_uint8(photos["astronaut"])
    assert out.dtype == np.uint8 and np.array_equal(out, photos["astronaut"])


def test_grayscale_becomes_three_equal_channels(photos):
    out = as_rgb_uint8(photos["camera"])
    assert out.shape == photos["camera"].shape + (3,)
    assert np.array_equal(out[:, :, 0], photos["camera"]) and np.array_equal(out[:, :, 2], photos["camera"])


def test_rgba_composites_transparent_pixels_onto_white():
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[:2, :, :3] = (10, 20, 30)
    rgba[:2, :, 3] = 255  # opaque top half, fully transparent bottom half
    out = as_rgb_uint8(rgba)
    assert (out[:2] == (10, 20, 30)).all() and (out[2:] == 255).all()


def test_palette_and_16bit_images():
    palette = Image.new("P", (5, 3))
    palette.putpalette([255, 0, 0] * 256)
    assert (as_rgb_uint8(palette) == (255, 0, 0)).all()
    deep = np.full((3, 5), 65535, dtype=np.uint16)
    deep[0, 0] = 0
    out = as_rgb_uint8(Image.fromarray(deep))
    assert out.shape == (3, 5, 3) and out[0, 0, 0] == 0 and out[1, 1, 0] == 255


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((0, 4, 3), np.uint8), "no pixels"),
        (np.zeros((4, 4, 2), np.uint8), "shape"),
        (np.full((2, 2, 3), np.nan, np.float32), "NaN"),
        ("not an image", "numpy array or a PIL image"),
    ],
)
def test_bad_images_are_named(bad, message):
    with pytest.raises(BadImageError, match=message):
        as_rgb_uint8(bad)
