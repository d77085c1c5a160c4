"""Upsampling only the classes that can win gives the full upsampling's argmax."""

import torch
import torch.nn.functional as F

from maskdex.operators.rns.units import possible_winners, upsample_argmax


def _full_argmax(scores, size, via=None):
    planes = scores.permute(2, 0, 1)[None]
    if via is not None:
        planes = F.interpolate(planes, size=via[0], mode="bilinear", align_corners=False)[..., : via[1][0], : via[1][1]]
    return F.interpolate(planes, size=size, mode="bilinear", align_corners=False)[0].argmax(dim=0)


def test_the_argmax_over_possible_winners_equals_the_full_argmax():
    generator = torch.Generator().manual_seed(0)
    for temperature in (0.5, 3.0, 10.0):  # flat to peaked class probabilities
        scores = torch.softmax(temperature * torch.randn(7, 9, 40, generator=generator), dim=-1)
        for size, via in [((23, 31), None), ((5, 6), None), ((50, 70), ((56, 72), (50, 70))),
                          ((30, 20), ((56, 72), (40, 60)))]:
            assert torch.equal(upsample_argmax(scores, size, chunk=4, via=via), _full_argmax(scores, size, via))


def test_a_class_that_leads_no_cell_can_still_win_between_cells():
    # class 2 is second on both cells but first halfway between them
    scores = torch.tensor([[[0.5, 0.0, 0.45], [0.0, 0.5, 0.45]]])
    assert possible_winners(scores).tolist() == [0, 1, 2]
    assert 2 in upsample_argmax(scores, (1, 8)).unique().tolist()
    # a class below another on every cell of every block never wins
    dominated = torch.tensor([[[0.6, 0.1, 0.05], [0.2, 0.5, 0.15]]])
    assert possible_winners(dominated).tolist() == [0, 1]
