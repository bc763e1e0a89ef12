"""Masking values and image cells: what the masking experiments put in and sum over."""

from __future__ import annotations

import torch

__all__ = ["cell_sums", "channel_mean"]


def channel_mean(pixels: torch.Tensor) -> torch.Tensor:
    """Per-image, per-channel mean ``[B, C, 1, 1]``: the value masked regions get."""
    return pixels.mean(dim=(-2, -1), keepdim=True)


def cell_sums(maps: torch.Tensor, cell: int) -> torch.Tensor:
    """Sum ``[B, (C,) H, W]`` maps over channels and ``cell x cell`` grid-aligned cells.

    Returns ``[B, H // cell, W // cell]``; pixels beyond the last whole cell are ignored.
    """
    if maps.dim() == 4:
        maps = maps.sum(1)
    b, h, w = maps.shape
    gh, gw = h // cell, w // cell
    if gh == 0 or gw == 0:
        raise ValueError(f"image is {h}x{w} pixels, smaller than one {cell}x{cell} cell")
    return maps[:, : gh * cell, : gw * cell].reshape(b, gh, cell, gw, cell).sum(dim=(2, 4))
