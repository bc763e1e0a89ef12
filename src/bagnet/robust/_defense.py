"""Defended BagNets and their certificates against adversarial patches.

Two defences act on the one-pass patch logits ("class evidence") of a BagNet:

- ``"mask"``: PatchGuard's robust masking (Xiang et al., *PatchGuard: A Provably Robust
  Defense against Adversarial Patches via Small Receptive Fields and Masking*, USENIX
  Security 2021, https://arxiv.org/abs/2005.10884). Evidence is clipped below at 0; for
  every class the window (of the size a patch can affect) holding the most of that class's
  evidence is removed before summing.
- ``"clip"``: Clipped BagNet (Zhang, Yuan, Mueller, Wagner, *Clipped BagNet: Defending
  Against Sticker Attacks with Clipped Bag-of-features*, IEEE S&P Workshops 2020,
  https://arxiv.org/abs/2003.07937). Every patch logit is squashed into a bounded range
  (by default their ``tanh(0.05 * x - 1)``, or clamped to ``clip_range``) before averaging.

A certificate says that no p x p patch anywhere in the image can change the defended
prediction. It slides the window the patch can affect over the evidence map and, at every
position, bounds the defended logits by the worst the adversary can put in that window:

- mask (PatchGuard's Algorithm 2 with detection threshold 0): a wrong class c keeps at
  most its clean evidence outside the window, since the window the masking removes holds
  at least the window the adversary filled; the predicted class keeps at least its
  evidence outside the window (the adversary sets the inside to 0) minus the largest
  window of what is left, which the masking then removes.
- clip: the predicted class gets the lower bound at every location of the window, every
  other class the upper bound.

The windows cover every affected set (see :func:`affected_locations`), and a window
larger than the affected set only weakens the bounds, so a certified prediction cannot be
changed by any patch of that size. All certificate arithmetic is float64.

.. note::
   PatchGuard also has a detection threshold ``T`` (masking only windows that hold a
   large share of the evidence); this implements its default ``T = 0`` (always mask).
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._geometry import AffectedLocations, affected_locations

__all__ = ["DEFENSES", "Certificate", "RobustBagNet", "certify"]

DEFENSES = ("mask", "clip", "none")


@dataclass
class Certificate:
    """Certificates of a batch of images against one patch size.

    Attributes:
        prediction: ``[N]`` the defended prediction.
        certified: ``[N]`` bool, no p x p patch anywhere can change ``prediction``.
        margin: ``[N]`` float64, the smallest worst-case gap (in logit units: evidence per
            location) between the predicted class and any other; certified iff > 0.
            ``-inf`` for the undefended model, which no bound holds.
        patch_size: side p in pixels.
        window: ``(rows, cols)`` of the evidence window a patch can affect.
        defense: ``"mask"``, ``"clip"`` or ``"none"``.
        removed: ``[N, 2]`` for ``"mask"``: the grid ``(row, col)`` of the top-left corner of
            the window the masking removed for the predicted class; ``None`` otherwise.
    """

    prediction: torch.Tensor
    certified: torch.Tensor
    margin: torch.Tensor
    patch_size: int
    window: tuple[int, int]
    defense: str
    removed: torch.Tensor | None = None

    def correct(self, labels: torch.Tensor) -> torch.Tensor:
        """``[N]`` bool, the defended prediction is the label."""
        return self.prediction.cpu() == torch.as_tensor(labels).cpu()

    def certified_correct(self, labels: torch.Tensor) -> torch.Tensor:
        """``[N]`` bool, certified and correct: what certified accuracy counts."""
        return self.correct(labels) & self.certified.cpu()

    def removed_box(self, i: int, receptive_field: int, patch_stride: int,
                    image_size: tuple[int, int]) -> list[int] | None:
        """The pixels the masking removed from image ``i``: ``[x0, y0, x1, y1]`` (x before y,
        x1 and y1 excluded) in the ``(height, width)`` = ``image_size`` input, the union of the
        ``receptive_field`` squares of the removed window's locations; ``None`` unless ``"mask"``."""
        if self.removed is None:
            return None
        q, s = receptive_field, patch_stride
        (r, c), (wh, ww) = self.removed[i].tolist(), self.window
        h, w = image_size
        return [s * c, s * r, min(w, s * (c + ww - 1) + q), min(h, s * (r + wh - 1) + q)]

    def _repr_html_(self, max_rows: int = 20) -> str:
        """A table of the certificates, shown inline by Jupyter (the first ``max_rows`` images)."""
        n = len(self.prediction)
        certified = int(self.certified.sum())
        head = (f"{html.escape(self.defense)} defence against {self.patch_size}x{self.patch_size} px patches "
                f"(window {self.window[0]}x{self.window[1]}): {certified} of {n} images certified")
        rows = []
        for i in range(min(n, max_rows)):
            ok = bool(self.certified[i])
            removed = "" if self.removed is None else str(tuple(int(v) for v in self.removed[i]))
            rows.append(f"<tr><td>{i}</td><td>{int(self.prediction[i])}</td>"
                        f"<td style='color:{'#006400' if ok else '#b00000'}'>{'yes' if ok else 'no'}</td>"
                        f"<td>{float(self.margin[i]):.4g}</td><td>{removed}</td></tr>")
        more = f"<p>... {n - max_rows} more</p>" if n > max_rows else ""
        return (f"<div class='bagnet-certificate'><p><b>{head}</b></p><table><tr><th>image</th>"
                "<th>prediction</th><th>certified</th><th>margin</th><th>removed window</th></tr>"
                f"{''.join(rows)}</table>{more}</div>")


def _window_sums(e: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """Sum of ``e [..., h, w]`` over every ``window`` (stride 1, inside the map):
    ``[..., h - wh + 1, w - ww + 1]``."""
    lead = e.shape[:-2]
    out = F.avg_pool2d(e.reshape(-1, 1, *e.shape[-2:]), window, stride=1, divisor_override=1)
    return out.reshape(*lead, *out.shape[-2:])


def _clamp_window(window: tuple[int, int], grid: tuple[int, int]) -> tuple[int, int]:
    # A patch's affected window can be larger than a small image's whole evidence map.
    return min(window[0], grid[0]), min(window[1], grid[1])


class RobustBagNet(nn.Module):
    """A BagNet defended against p x p adversarial patches; ``forward`` returns defended logits.

    Args:
        model: a BagNet (any model of the registry, also fused), with ``patch_logits``.
        patch_size: the patch to defend against: side in pixels, or area fraction
            (``"2%"``, ``0.02``) of each input image (see :func:`patch_pixels`).
        defense: ``"mask"`` (PatchGuard robust masking), ``"clip"`` (Clipped BagNet) or
            ``"none"`` (the plain model, never certified; for side-by-side runs).
        clip_range: for ``"clip"``, clamp the evidence to ``(low, high)`` instead of the
            tanh squashing.
        tanh_scale, tanh_shift: for ``"clip"`` without ``clip_range``, the squashing
            ``tanh(tanh_scale * x + tanh_shift)`` (Clipped BagNet's 0.05 and -1 by default,
            chosen for ImageNet logits; the bounds are -1 and 1 whatever the values).

    Raises:
        ValueError: unknown defence, a model without patch logits, or a bad clip range.
    """

    def __init__(self, model: nn.Module, patch_size: int | float | str = "2%", defense: str = "mask", *,
                 clip_range: tuple[float, float] | None = None, tanh_scale: float = 0.05,
                 tanh_shift: float = -1.0):
        super().__init__()
        if defense not in DEFENSES:
            raise ValueError(f"unknown defense {defense!r}; use one of {', '.join(DEFENSES)}")
        if not callable(getattr(model, "patch_logits", None)):
            raise ValueError(f"{type(model).__name__} has no patch logits; patch defences need a BagNet")
        if clip_range is not None:
            if defense != "clip":
                raise ValueError("clip_range is for defense='clip'")
            lo, hi = (float(v) for v in clip_range)
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ValueError(f"clip_range {clip_range} must be two finite numbers, low < high")
        self.model = model
        self.patch_size = patch_size
        self.defense = defense
        self.clip_range = clip_range
        self.tanh_scale = tanh_scale
        self.tanh_shift = tanh_shift
        # nn.Module starts in training mode; mirror the model instead, so wrapping an eval()
        # model gives an eval() defence (a train() wrapper would later switch its BatchNorm).
        self.train(model.training)

    # -- what the defence allows -----------------------------------------------------

    @property
    def bounds(self) -> tuple[float, float]:
        """``(low, high)``: the range of one defended evidence value."""
        if self.defense == "clip":
            return tuple(map(float, self.clip_range)) if self.clip_range is not None else (-1.0, 1.0)
        return (0.0, math.inf) if self.defense == "mask" else (-math.inf, math.inf)

    def squash(self, evidence: torch.Tensor) -> torch.Tensor:
        """Raw patch logits -> the evidence the defence sums (clipped at 0, squashed, or as is)."""
        if self.defense == "mask":
            return evidence.clamp(min=0)
        if self.defense == "clip":
            if self.clip_range is not None:
                return evidence.clamp(*self.clip_range)
            return torch.tanh(self.tanh_scale * evidence + self.tanh_shift)
        return evidence

    def geometry(self, image_size: tuple[int, int]) -> AffectedLocations:
        """The affected locations of this defence's patch at ``image_size``."""
        return affected_locations(self.model, tuple(image_size), self.patch_size)

    # -- defended logits -------------------------------------------------------------

    def defend(self, evidence: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
        """Defended logits ``[N, C]`` from raw patch logits ``[N, C, h, w]`` and the window a
        patch can affect (in logit units: summed evidence per location)."""
        e = self.squash(evidence)
        h, w = e.shape[-2:]
        if self.defense != "mask":
            return e.mean((2, 3))
        removed = _window_sums(e, _clamp_window(window, (h, w))).amax((2, 3))
        return (e.sum((2, 3)) - removed) / (h * w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        evidence = self.model.patch_logits(x)
        # float64 like the certificates, so that both see the same prediction (a window as
        # large as the map leaves exact zeros, not float32 rounding noise).
        return self.defend(evidence.double(), self.geometry(x.shape[-2:]).window).to(evidence.dtype)

    # -- certificates ------------------------------------------------------------------

    @torch.no_grad()
    def certify(self, x: torch.Tensor, chunk: int = 16) -> Certificate:
        """Defended prediction, certificate and margin of every image of ``x`` ``[N, C, H, W]``."""
        geo = self.geometry(x.shape[-2:])
        return self.certify_evidence(self.model.patch_logits(x), geo.window, geo.patch_size, chunk=chunk)

    @torch.no_grad()
    def certify_evidence(self, evidence: torch.Tensor, window: tuple[int, int], patch_size: int = 0,
                         chunk: int = 16) -> Certificate:
        """:meth:`certify` from raw patch logits ``[N, C, h, w]`` and the affected window."""
        raw = evidence.double()
        window = _clamp_window(window, raw.shape[-2:])
        pred = self.defend(raw, window).argmax(1)
        if self.defense == "none":
            margin = torch.full(pred.shape, -math.inf, dtype=torch.float64, device=raw.device)
            return Certificate(pred, margin > 0, margin, patch_size, window, self.defense)
        e = self.squash(raw)
        parts = [self._margin(e[i:i + chunk], pred[i:i + chunk], window) for i in range(0, len(e), chunk)]
        margin = torch.cat(parts) if parts else torch.empty(0, dtype=torch.float64, device=raw.device)
        removed = None
        if self.defense == "mask":
            sums = _window_sums(e.gather(1, pred[:, None, None, None].expand(-1, 1, *e.shape[-2:]))[:, 0], window)
            flat = sums.flatten(1).argmax(1)
            removed = torch.stack([flat // sums.shape[-1], flat % sums.shape[-1]], 1)
        return Certificate(pred, margin > 0, margin, patch_size, window, self.defense, removed)

    def _margin(self, e: torch.Tensor, pred: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
        """Worst-case gap ``[n]`` over all window positions for squashed evidence ``e``."""
        h, w = e.shape[-2:]
        sums = _window_sums(e, window)  # [n, C, nh, nw]
        outside = e.sum((2, 3))[:, :, None, None] - sums  # clean evidence outside each window
        idx = pred[:, None, None, None]
        outside_pred = outside.gather(1, idx.expand(-1, 1, *outside.shape[-2:]))[:, 0].flatten(1)  # [n, nW]
        if self.defense == "clip":
            lo, hi = self.bounds
            size = window[0] * window[1]
            lower = outside_pred + size * lo
            upper = outside + size * hi
        else:
            # The adversary zeroes the predicted class inside the window; the masking then
            # removes the largest remaining window of it.
            keep = 1.0 - self._window_indicators((h, w), window, e.device)  # [nW, h, w]
            e_pred = e.gather(1, idx.expand(-1, 1, h, w))[:, 0]  # [n, h, w]
            left = e_pred[:, None] * keep[None]  # [n, nW, h, w]
            lower = outside_pred - _window_sums(left, window).flatten(2).amax(2)
            upper = outside
        upper = upper.scatter(1, idx.expand(-1, 1, *upper.shape[-2:]), -math.inf).amax(1).flatten(1)
        return (lower - upper).amin(1) / (h * w)

    @staticmethod
    def _window_indicators(grid: tuple[int, int], window: tuple[int, int], device: torch.device) -> torch.Tensor:
        """``[nW, h, w]`` float64: 1 inside each window position (row-major), else 0."""
        (h, w), (wh, ww) = grid, window
        out = torch.zeros((h - wh + 1) * (w - ww + 1), h, w, dtype=torch.float64, device=device)
        k = 0
        for r in range(h - wh + 1):
            for c in range(w - ww + 1):
                out[k, r:r + wh, c:c + ww] = 1.0
                k += 1
        return out

    def extra_repr(self) -> str:
        return f"patch_size={self.patch_size!r}, defense={self.defense!r}, bounds={self.bounds}"


def certify(model: nn.Module, images: torch.Tensor, labels: torch.Tensor | None = None, *,
            patch_size: int | float | str | None = None, defense: str | None = None, **kwargs: Any) -> Certificate:
    """Certify a batch of normalized images against p x p patches anywhere in the image.

    Args:
        model: a BagNet, or a :class:`RobustBagNet` (which brings its own patch size and defence).
        images: ``[N, C, H, W]`` normalized images.
        labels: optional ``[N]``; only checked for length here (use
            :meth:`Certificate.certified_correct` for certified accuracy).
        patch_size: side in pixels or area fraction (``"2%"``); required for a plain BagNet.
        defense: ``"mask"`` (the default for a plain BagNet), ``"clip"`` or ``"none"``.
        **kwargs: :class:`RobustBagNet` options (``clip_range``, ``tanh_scale``, ``tanh_shift``).

    Returns:
        A :class:`Certificate`: defended prediction, certified flag and margin per image.
    """
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"{len(labels)} labels for {len(images)} images")
    if isinstance(model, RobustBagNet):
        if patch_size is not None or defense is not None or kwargs:
            raise ValueError("a RobustBagNet brings its own patch size and defence; pass the plain BagNet to change them")
        robust = model
    else:
        if patch_size is None:
            raise ValueError("certify needs patch_size (pixels, or an area fraction such as '2%')")
        robust = RobustBagNet(model, patch_size, defense or "mask", **kwargs)
    # Restore every module's own mode afterwards: train(was_training) on the wrapper would
    # push the wrapper's mode onto the caller's model (and its BatchNorm onto batch statistics).
    modes = [(m, m.training) for m in robust.modules()]
    robust.eval()
    try:
        return robust.certify(images)
    finally:
        for m, training in modes:
            m.training = training
