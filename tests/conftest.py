import numpy as np
import pytest
from skimage import data


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    """Real photos shipped with scikit-image, in the forms they come (RGB, grayscale, RGBA)."""
    return {
        "astronaut": data.astronaut(),
        "coffee": data.coffee(),
        "chelsea": data.chelsea(),
        "camera": data.camera(),  # grayscale
        "logo": data.logo(),  # RGBA
    }
