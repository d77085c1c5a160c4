import os

import numpy as np
import pytest
from skimage import data

# Every Ray process the tests start (in-process, CLI subprocesses, `ray start`) runs without token
# auth and binds to loopback only: this makes Ray treat the machine as a single-host setup.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


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


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for every in-process test: 4 logical CPUs over 2 cores, so the read tasks
    and both model actor pools always find a slot."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
