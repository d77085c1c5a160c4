import pytest

from tests.support.planted_retrieval import build_planted


@pytest.fixture
def planted(tmp_path):
    """A retrieval index with planted rankings, and its annotations file."""
    return build_planted(tmp_path)
