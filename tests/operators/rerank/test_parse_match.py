"""Parsing literal replies (never trusting them) and matching boxes to stored regions."""

from __future__ import annotations

import numpy as np
import pytest

from maskdex.operators.rerank.base import BoxFrame
from maskdex.operators.rerank.matching import best_region, box_iou
from maskdex.operators.rerank.parse import CONFIRMED, REJECTED, UNPARSED, parse_reply

# The model saw a 200 x 100 resized input of a 400 x 300 original: x scales by 2, y by 3.
FRAME = BoxFrame.pixels(200, 100)
W, H = 400, 300


def test_well_formed_json_is_rescaled_from_the_model_frame_to_the_original():
    verdict = parse_reply('{"present": "yes", "boxes": [[10, 20, 60, 50]]}', FRAME, W, H)
    assert verdict.status == CONFIRMED
    assert verdict.boxes == [[20.0, 60.0, 120.0, 150.0]]


def test_qwen_grounding_list_in_prose_and_code_fence():
    reply = ('Sure! The dog is here:\n```json\n[{"bbox_2d": [0, 0, 100, 50], "label": "dog"}]\n```\n'
             "Let me know if you need anything else.")
    verdict = parse_reply(reply, FRAME, W, H)
    assert verdict.status == CONFIRMED
    assert verdict.boxes == [[0.0, 0.0, 200.0, 150.0]]


def test_boxes_out_of_bounds_are_clipped_and_boxes_left_empty_are_dropped():
    reply = '{"present": "yes", "boxes": [[-50, -10, 300, 80], [250, 120, 400, 200]]}'
    verdict = parse_reply(reply, FRAME, W, H)
    assert verdict.boxes == [[0.0, 0.0, 400.0, 240.0]]  # the second lies wholly outside the frame
    only_outside = parse_reply('{"present": "yes", "boxes": [[250, 120, 400, 200]]}', FRAME, W, H)
    assert only_outside.status == CONFIRMED and only_outside.boxes == []
    assert "outside" in only_outside.reason


def test_corners_in_the_wrong_order_are_put_in_order():
    verdict = parse_reply('{"present": "yes", "boxes": [[60, 50, 10, 20]]}', FRAME, W, H)
    assert verdict.boxes == [[20.0, 60.0, 120.0, 150.0]]


def test_several_boxes_are_all_kept():
    reply = '{"present": "yes", "boxes": [[0, 0, 10, 10], [50, 50, 100, 100], [1, 2, 3, 4]]}'
    assert len(parse_reply(reply, FRAME, W, H).boxes) == 3


def test_yes_without_a_box_is_confirmed_without_boxes():
    verdict = parse_reply("Yes, there is one.", FRAME, W, H)
    assert verdict.status == CONFIRMED and verdict.boxes == []


@pytest.mark.parametrize("reply", ["no", "No.", '{"present": "no", "boxes": []}', '{"present": false}',
                                   "No, I see only a cat."])
def test_no_is_rejected(reply):
    assert parse_reply(reply, FRAME, W, H).status == REJECTED


def test_a_json_label_does_not_count_as_the_answer_word():
    # The words inside the JSON are keys and labels; the explicit field decides.
    assert parse_reply('{"present": "yes", "label": "no entry sign", "boxes": [[0, 0, 9, 9]]}',
                       FRAME, W, H).status == CONFIRMED


def test_bare_box_in_prose_counts_as_a_confirmation():
    verdict = parse_reply("The object is at (10, 20, 60, 50) in the picture", FRAME, W, H)
    assert verdict.status == CONFIRMED and verdict.boxes == [[20.0, 60.0, 120.0, 150.0]]


@pytest.mark.parametrize("reply", [None, "", "   ", "8� assistantT� T^(.", '{"boxes": "many"}', "[1, 2, 3]",
                                   '{"present": "maybe"}', '{"boxes": [[NaN, 0, 1, 1]]}', "}{][" * 50])
def test_garbage_is_unparsed_with_a_reason(reply):
    verdict = parse_reply(reply, FRAME, W, H)
    assert verdict.status == UNPARSED
    assert verdict.reason


def test_normalized_frame():
    verdict = parse_reply('[{"bbox_2d": [500, 0, 1000, 500]}]', BoxFrame.normalized(1000), W, H)
    assert verdict.boxes == [[200.0, 0.0, 400.0, 150.0]]


def test_box_iou_against_an_independent_count_of_pixels():
    rng = np.random.default_rng(0)
    boxes = rng.integers(0, 30, size=(6, 4)).astype(float)
    boxes[:, 2:] = boxes[:, :2] + rng.integers(1, 20, size=(6, 2))
    ious = box_iou(boxes, boxes[::-1])
    for i, a in enumerate(boxes):
        for j, b in enumerate(boxes[::-1]):
            canvas_a = np.zeros((60, 60), bool)
            canvas_b = np.zeros((60, 60), bool)
            canvas_a[int(a[1]):int(a[3]), int(a[0]):int(a[2])] = True
            canvas_b[int(b[1]):int(b[3]), int(b[0]):int(b[2])] = True
            expected = (canvas_a & canvas_b).sum() / (canvas_a | canvas_b).sum()
            assert ious[i, j] == pytest.approx(expected)


def test_matched_region_is_the_highest_iou_over_all_boxes():
    regions = [[0, 0, 100, 100], [200, 200, 300, 300], [190, 190, 310, 310], [0, 0, 50, 50]]
    scores = [0.9, 0.1, 0.5, 0.8]
    # The first box overlaps region 0 at 0.25; the second matches region 1 exactly.
    match = best_region([[0, 0, 50, 200], [200, 200, 300, 300]], regions, scores)
    assert (match.region, match.box) == (1, 1)
    assert match.iou == pytest.approx(1.0)


def test_equal_iou_goes_to_the_higher_region_score():
    regions = [[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]]
    assert best_region([[0, 0, 10, 10]], regions, [0.2, 0.7, 0.5]).region == 1


def test_no_overlap_is_no_match():
    assert best_region([[0, 0, 10, 10]], [[50, 50, 60, 60]], [1.0]) is None
    assert best_region([], [[50, 50, 60, 60]], [1.0]) is None
