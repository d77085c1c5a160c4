"""The crop sent to Alpha-CLIP carries the mask exactly where the masked object is."""

import numpy as np
import pytest
from scipy import ndimage

from maskdex.operators.alpha_clip.crops import crop_inputs, denormalise, full_image_window, region_window

RED = np.array([220, 30, 40], dtype=np.uint8)
BACKGROUND = np.array([20, 160, 60], dtype=np.uint8)


def _scene(height, width, x, y, side):
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    image[y : y + side, x : x + side] = RED
    mask = np.zeros((height, width), dtype=bool)
    mask[y : y + side, x : x + side] = True
    return image, mask


def _assert_mask_on_square(image, mask, window, size=96):
    pixels, alpha = crop_inputs(image, mask, window, size)
    assert pixels.shape == (3, size, size) and alpha.shape == (1, size, size)
    rgb, unit_alpha = denormalise(pixels, alpha)
    expected_area = mask.sum() * (size / window.side) ** 2
    assert abs(unit_alpha.sum() - expected_area) <= 0.1 * expected_area + 2 * size
    # Away from the few-pixel band where the bicubic (image) and bilinear (mask) kernels differ:
    # where the crop says "mask" the pixels are the red square, where it says "not mask" they are not.
    inside = ndimage.binary_erosion(unit_alpha > 0.95, iterations=3)
    outside = ndimage.binary_erosion(unit_alpha < 0.05, iterations=3)
    assert inside.any(), "the mask must be visible in the crop"
    assert np.abs(rgb[inside].astype(int) - RED).max() <= 6
    assert (np.abs(rgb[outside].astype(int) - RED).max(axis=1) > 60).all()
    # And the red pixels sit where the mask is: same centroid to within a pixel.
    red = (np.abs(rgb.astype(int) - RED).max(axis=2) <= 40).astype(float)
    mask_centroid = ndimage.center_of_mass(unit_alpha)
    red_centroid = ndimage.center_of_mass(red)
    assert np.allclose(mask_centroid, red_centroid, atol=1.0)


@pytest.mark.parametrize(
    "height, width, x, y, side",
    [
        (120, 200, 80, 40, 30),  # landscape, centred square
        (200, 90, 10, 150, 25),  # portrait, near the bottom
        (100, 100, 0, 0, 20),  # touching the top-left border
        (80, 300, 270, 50, 30),  # touching the bottom-right border of a wide image
        (50, 50, 10, 10, 30),  # region bigger than half the image
    ],
)
@pytest.mark.parametrize("context", [0.0, 0.5, 2.0])
def test_region_crop_keeps_mask_on_the_square(height, width, x, y, side, context):
    image, mask = _scene(height, width, x, y, side)
    window = region_window((x, y, side, side), height, width, context)
    assert window.side >= side
    _assert_mask_on_square(image, mask, window)


@pytest.mark.parametrize("height, width", [(60, 200), (200, 60), (128, 128)])
def test_full_image_window_letterboxes_whole_image(height, width):
    image, mask = _scene(height, width, width // 3, height // 3, min(height, width) // 3)
    window = full_image_window(height, width)
    assert window.side == max(height, width)
    _assert_mask_on_square(image, mask, window)


def test_context_margin_widens_the_window_around_the_box():
    tight = region_window((100, 100, 40, 20), 400, 400, 0.0)
    wide = region_window((100, 100, 40, 20), 400, 400, 0.5)
    assert tight.side == 40 and wide.side == 80
    # Both windows are centred on the box centre (120, 110).
    for window in (tight, wide):
        assert abs(window.x0 + window.side / 2 - 120) <= 1 and abs(window.y0 + window.side / 2 - 110) <= 1


def test_padding_outside_the_image_is_mean_colour_and_unmasked():
    image, mask = _scene(40, 40, 0, 0, 40)  # the whole image is the square
    pixels, alpha = crop_inputs(image, mask, region_window((0, 0, 40, 40), 40, 40, 0.5), 80)
    assert float(pixels[:, :5, :5].abs().max()) < 0.05  # mean colour normalises to ~0
    _, unit_alpha = denormalise(pixels, alpha)
    assert unit_alpha[:5, :5].max() < 0.01 and unit_alpha[40, 40] > 0.99
