"""COCO RLE of a batch of masks computed with tensor ops on the masks' device, for many masks at once.

The result is the exact compressed string pycocotools' `encode` gives (its rleToString: counts in
column-major order, each count from the third on stored as the difference to the count two before,
written 5 bits a character with a continuation bit, plus 48), with boxes and areas as its
`toBbox`/`area` give them. Everything but the final split into one string per mask runs on the
device, so a GPU caller moves one small byte buffer to the host instead of the masks.
"""

from __future__ import annotations

import torch

# A count of up to 2**35 pixels needs at most 7 characters of 5 bits (one more for a sign bit).
_MAX_CHARS = 8


def encode(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(chars, lengths) for K x H x W boolean masks: chars is every mask's compressed counts string,
    concatenated as uint8 on the masks' device, lengths (K,) how many belong to each mask."""
    if masks.ndim != 3:
        raise ValueError(f"expected K x H x W masks, got shape {tuple(masks.shape)}")
    k, height, width = masks.shape
    device = masks.device
    if k == 0:
        return torch.zeros(0, dtype=torch.uint8, device=device), torch.zeros(0, dtype=torch.long, device=device)
    pixels = height * width
    flat = masks.transpose(1, 2).reshape(k, pixels).bool()  # column-major, as COCO counts pixels
    owner, position = (flat[:, 1:] ^ flat[:, :-1]).nonzero(as_tuple=True)  # by mask, then position
    # Each mask's counts are its run lengths, led by a 0 when its first pixel is foreground (COCO
    # counts start with background): changes + 1 runs, + 1 slot for that 0.
    lead = flat[:, 0].long()
    changes = torch.bincount(owner, minlength=k)
    per_mask = changes + 1 + lead
    first = torch.cumsum(per_mask, 0) - per_mask
    ends = torch.zeros(int(per_mask.sum()), dtype=torch.long, device=device)
    starts = torch.zeros_like(ends)
    rank = torch.arange(owner.numel(), device=device) - (torch.cumsum(changes, 0) - changes)[owner]
    run_slot = first[owner] + lead[owner] + rank
    ends[run_slot] = position + 1
    starts[run_slot + 1] = position + 1  # the run after a change starts where it ends
    last = first + per_mask - 1
    ends[last] = pixels
    counts = ends - starts
    count_owner = torch.repeat_interleave(torch.arange(k, device=device), per_mask)
    # Index of each count within its mask, for the "difference to the count two before" rule (i > 2).
    index = torch.arange(counts.numel(), device=device) - first[count_owner]
    values = counts.clone()
    later = index > 2
    values[later] -= counts[torch.nonzero(later, as_tuple=True)[0] - 2]
    # Characters per value: n 5-bit groups hold a signed value in [-2^(5n-1), 2^(5n-1)).
    n_chars = torch.ones_like(values)
    for groups in range(1, _MAX_CHARS):
        n_chars += (values >= (1 << (5 * groups - 1))) | (values < -(1 << (5 * groups - 1)))
    offsets = torch.cumsum(n_chars, 0) - n_chars
    chars = torch.empty(int(n_chars.sum()), dtype=torch.uint8, device=device)
    index = torch.arange(values.numel(), device=device)
    for slot in range(_MAX_CHARS):
        if slot:  # only the values that need this many characters go on (few, after the second)
            index = index[n_chars[index] > slot]
            if not index.numel():
                break
        group = (values[index] >> (5 * slot)) & 0x1F  # arithmetic shift, as C's on a signed long
        more = (n_chars[index] > slot + 1).to(group.dtype)
        chars[offsets[index] + slot] = ((group | (more << 5)) + 48).to(torch.uint8)
    lengths = torch.zeros(k, dtype=torch.long, device=device).index_add_(0, count_owner, n_chars)
    return chars, lengths


def boxes_and_areas(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(K, 4) boxes as x, y, w, h with w and h counting the columns and rows covered (pycocotools'
    toBbox; zeros for an empty mask) and (K,) areas, for K x H x W boolean masks."""
    k, height, width = masks.shape
    masks = masks.bool()
    areas = masks.sum((1, 2))
    cols = masks.any(1)
    rows = masks.any(2)
    x = torch.arange(width, device=masks.device)
    y = torch.arange(height, device=masks.device)
    x0 = torch.where(cols, x, width).amin(1) if width else torch.zeros(k, dtype=torch.long, device=masks.device)
    x1 = torch.where(cols, x, -1).amax(1) if width else x0 - 1
    y0 = torch.where(rows, y, height).amin(1) if height else torch.zeros(k, dtype=torch.long, device=masks.device)
    y1 = torch.where(rows, y, -1).amax(1) if height else y0 - 1
    boxes = torch.stack([x0, y0, x1 - x0 + 1, y1 - y0 + 1], 1)
    return torch.where((areas > 0)[:, None], boxes, 0), areas


def split(chars, lengths) -> list[str]:
    """The host side: one str per mask from encode()'s buffer (numpy or bytes) and lengths."""
    buffer = bytes(chars)
    ends = [int(e) for e in (lengths.cumsum(0) if hasattr(lengths, "cumsum") else lengths)]
    out, start = [], 0
    for end in ends:
        out.append(buffer[start:end].decode("ascii"))
        start = end
    return out
