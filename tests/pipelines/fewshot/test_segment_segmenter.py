"""The long-lived Segmenter with the tiny preset on synthetic scenes, in process.

The tiny CLIP has random weights, so text alone is near chance: what RNS gets right, it learnt from
the examples.
"""

import numpy as np
import pytest

from maskdex.operators.metrics.segmentation import confusion_matrix, mean_iou
from maskdex.pipelines.fewshot.dense import open_support_store
from maskdex.pipelines.fewshot.segmenter import Segmenter
from maskdex.pipelines.fewshot.supports import add_example
from tests.support.synthetic import IGNORE, NAMES, SEGMENT_SETTINGS, add_scenes, example, scene


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    segmenter = Segmenter(str(tmp_path_factory.mktemp("segment") / "db"), SEGMENT_SETTINGS, create=True)
    add_scenes(segmenter, "scenes", per_class=2, seed=0)
    segmenter.add_example("other", scene(np.random.default_rng(1))[0], np.zeros((64, 64), np.int64), ["@thing"])
    return segmenter


@pytest.fixture(scope="module")
def tests():
    rng = np.random.default_rng(100)
    return [scene(rng)[:2] for _ in range(4)]


def miou(results, tests) -> float:
    return mean_iou(sum(confusion_matrix(result.labels.astype(np.int64), labels, len(NAMES))
                        for result, (_, labels) in zip(results, tests)))


def test_examples_beat_zero_shot_which_is_the_fallback_without_any(segmenter, tests):
    with_examples = [segmenter.segment(image, "scenes", list(NAMES)) for image, _ in tests]
    # "other" has no example of these classes: RNS falls back to zero-shot, and says so.
    zero_shot = [segmenter.segment(image, "other", list(NAMES)) for image, _ in tests]
    assert not any(result.used_fallback for result in with_examples)
    assert all(result.used_fallback and result.visual_support == () for result in zero_shot)
    assert miou(with_examples, tests) > 0.6
    assert miou(with_examples, tests) > miou(zero_shot, tests) + 0.3


def test_a_result_describes_itself(segmenter, tests):
    image, _ = tests[0]
    result = segmenter.segment(image, "scenes")
    assert result.class_names == tuple(sorted(NAMES))  # the set's classes, sorted, by default
    assert result.labels.shape == image.shape[:2] and result.labels.dtype == np.uint8
    assert int(result.labels.max()) < len(NAMES)
    assert result.visual_support == result.text_support == result.class_names
    assert result.support_images == segmenter.store.load("scenes").images_per_class
    assert min(result.support_images.values()) >= 2  # every class got two scenes of its own
    assert sum(result.pixel_fractions.values()) == pytest.approx(1.0, abs=1e-4)
    assert result.found and all(result.pixel_fractions[name] > 0 for name in result.found)
    summary = result.summary()
    assert (summary["width"], summary["height"], summary["mode"], summary["used_fallback"]) == (64, 64, "patch", False)


def test_examples_added_by_another_writer_apply_at_the_next_call(segmenter, tests):
    rng = np.random.default_rng(7)
    sky_only = None
    while sky_only is None or not (sky_only[1] == 0).any():
        sky_only = scene(rng, must=0)
    image, labels, _ = sky_only
    segmenter.add_example("growing", image, np.where(labels == 0, 0, IGNORE), ["sky"])
    before = [segmenter.segment(test, "growing", list(NAMES)) for test, _ in tests]
    assert before[0].visual_support == ("sky",)

    # Another process's view of the same database: a separate store handle adds the other classes,
    # and a set the segmenter has never seen.
    writer = open_support_store(segmenter.db, "tiny")
    rng = np.random.default_rng(8)
    for cls in range(len(NAMES)):
        for set_name in ("growing", "late"):
            image, labels, _ = scene(rng, must=cls)
            add_example(writer, set_name, image, *example(labels), extractor=segmenter.extractor)
    after = [segmenter.segment(test, "growing", list(NAMES)) for test, _ in tests]
    assert after[0].visual_support == NAMES
    assert miou(after, tests) > miou(before, tests) + 0.1
    assert segmenter.segment(tests[0][0], "late").visual_support == tuple(sorted(NAMES))


def test_shots_only_and_example_only_classes(segmenter, tests):
    image, _ = tests[0]
    shots = segmenter.segment(image, "scenes", list(NAMES), shots_only=True)
    assert shots.text_support == () and shots.visual_support == NAMES and not shots.used_fallback

    # '@thing' has examples but no name for text; 'sky' has a name but no example in this set.
    mixed = segmenter.segment(image, "other", ["@thing", "sky"])
    assert (mixed.visual_support, mixed.text_support, mixed.used_fallback) == (("@thing",), ("sky",), False)
    with pytest.raises(ValueError, match="no example of 'sky' and shots-only leaves text out"):
        segmenter.segment(image, "other", ["@thing", "sky"], shots_only=True)
    with pytest.raises(ValueError, match="no example of '@nothing' and '@' classes have no name"):
        segmenter.segment(image, "other", ["@thing", "@nothing"])
    with pytest.raises(ValueError, match="no support set 'nope'"):
        segmenter.segment(image, "nope")
    with pytest.raises(ValueError, match="mode must be one of patch, region"):
        segmenter.segment(image, "scenes", mode="pixels")


def test_region_mode_without_an_index_runs_sam2(segmenter, tests):
    image, _ = tests[0]
    result = segmenter.segment(image, "scenes", mode="region")
    assert (result.mode, result.regions) == ("region", "sam2")
    assert result.labels.shape == image.shape[:2]


def test_segment_many_trains_a_group_together_and_equals_segment_alone(segmenter, tests):
    from maskdex.pipelines.fewshot.segmenter import SegmentCall

    calls = [SegmentCall(tests[0][0], "scenes", list(NAMES), seed=0),
             SegmentCall(tests[1][0], "scenes", list(NAMES), seed=5),
             SegmentCall(b"not an image", "scenes", list(NAMES)),
             SegmentCall(tests[2][0], "other", list(NAMES), seed=1),  # another group: zero-shot fallback
             SegmentCall(tests[3][0], "scenes", list(NAMES), seed=0),
             SegmentCall(tests[0][0], "no-such-set", list(NAMES))]
    results = segmenter.segment_many(calls)
    assert isinstance(results[2], ValueError) and isinstance(results[5], Exception)
    for index in (0, 1, 3, 4):
        call, result = calls[index], results[index]
        alone = segmenter.segment(call.image, call.set_name, call.classes, seed=call.seed)
        assert np.array_equal(result.labels, alone.labels)
        assert result.summary() == alone.summary()
    assert results[3].used_fallback and not results[0].used_fallback
    # The seed reaches each image's own head: the same image with another seed trains another head.
    other_seed = segmenter.segment_many([SegmentCall(tests[0][0], "scenes", list(NAMES), seed=s) for s in (0, 7)])
    assert np.array_equal(other_seed[0].labels, results[0].labels)
