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
  (``tanh(a * x + b)``, or clamped to ``clip_range``) before averaging; :func:`clip_squashing`
  decides ``a`` and ``b`` for a model.

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
changed by any patch of that size. All certificate arithmetic is float64, and so are the
defended logits of :meth:`RobustBagNet.forward`: their argmax is the certified prediction.

Certificates hold for the model in eval mode: in training mode BatchNorm normalizes with
the batch's statistics, through which a sticker on one image changes the evidence of every
location of every image. :meth:`RobustBagNet.certify`, :func:`certify` and
:func:`~bagnet.robust.robustness_records` compute the evidence in eval mode and give every
submodule its own mode back; :meth:`RobustBagNet.certify_evidence`, which cannot tell how
evidence handed to it was computed, refuses a model in training mode.

.. note::
   PatchGuard also has a detection threshold ``T`` (masking only windows that hold a
   large share of the evidence); this implements its default ``T = 0`` (always mask).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ._certificate import Certificate, _eval_mode
from ._cleanser import PatchCleanser, certify_cleanser
from ._geometry import AffectedLocations, _a, affected_locations, affected_window, patch_pixels
from ._squashing import clip_squashing
from ._windows import _STEP_BYTES, _clamp_window, _class_step, _largest_window_left, _window_max, _window_sums

__all__ = ["DEFENSES", "RobustBagNet", "certify"]

DEFENSES = ("mask", "clip", "none", "cleanser")
"""The ``defense`` values: PatchGuard's robust masking, Clipped BagNet, the plain model
(these three of :class:`RobustBagNet`), and PatchCleanser for any classifier
(:class:`~bagnet.robust.PatchCleanser`)."""

_BAGNET_DEFENSES = ("mask", "clip", "none")


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
        tanh_scale: for ``"clip"`` without ``clip_range``, the squashing
            ``tanh(tanh_scale * x + tanh_shift)``; where not given, :func:`clip_squashing`
            decides (the model's own training squashing, else ``tanh(1 * x - 2)``). The
            bounds are -1 and 1 whatever the values.
        tanh_shift: see ``tanh_scale``.

    Raises:
        ValueError: unknown defence, a model without patch logits, a bad clip range, or
            ``clip_range`` with a tanh squashing.

    .. note::
       ``forward`` follows the module's mode, as any module does (in training mode its
       BatchNorm uses batch statistics); certificates always use eval mode.
    """

    def __init__(self, model: nn.Module, patch_size: int | float | str = "2%", defense: str = "mask", *,
                 clip_range: tuple[float, float] | None = None, tanh_scale: float | None = None,
                 tanh_shift: float | None = None):
        super().__init__()
        if defense == "cleanser":
            raise ValueError("defense 'cleanser' is PatchCleanser, for any classifier: use "
                             "bagnet.robust.PatchCleanser(model, patch_size) or certify(..., defense='cleanser')")
        if defense not in _BAGNET_DEFENSES:
            raise ValueError(f"unknown defense {defense!r}; use one of {', '.join(DEFENSES)}")
        if not callable(getattr(model, "patch_logits", None)):
            raise ValueError(f"{type(model).__name__} has no patch logits; patch defences need a BagNet")
        if clip_range is not None:
            if defense != "clip":
                raise ValueError("clip_range is for defense='clip'")
            if tanh_scale is not None or tanh_shift is not None:
                raise ValueError("clip_range replaces the tanh squashing; drop tanh_scale/tanh_shift")
            lo, hi = (float(v) for v in clip_range)
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ValueError(f"clip_range {clip_range} must be two finite numbers, low < high")
        self.model = model
        self.patch_size = patch_size
        self.defense = defense
        self.clip_range = clip_range
        self.clip = clip_squashing(model, tanh_scale, tanh_shift) if defense == "clip" and clip_range is None else None
        self.tanh_scale = self.clip.scale if self.clip is not None else tanh_scale
        self.tanh_shift = self.clip.shift if self.clip is not None else tanh_shift
        # nn.Module starts in training mode; mirror the model instead, so wrapping an eval()
        # model gives an eval() defence (a train() wrapper would later switch its BatchNorm).
        # The wrapper's own flag only: train() would push one mode onto every submodule.
        self.training = model.training

    # -- what the defence allows -----------------------------------------------------

    @property
    def bounds(self) -> tuple[float, float]:
        """``(low, high)``: the range of one defended evidence value."""
        if self.defense == "clip":
            return tuple(map(float, self.clip_range)) if self.clip_range is not None else (-1.0, 1.0)
        return (0.0, math.inf) if self.defense == "mask" else (-math.inf, math.inf)

    @property
    def squashing(self) -> str | None:
        """For ``"clip"``: ``"tanh(1 * x - 2)"`` or ``"clamp to [0, 3]"``; ``None`` otherwise."""
        if self.defense != "clip":
            return None
        if self.clip_range is not None:
            lo, hi = (float(v) for v in self.clip_range)
            return f"clamp to [{lo:g}, {hi:g}]"
        return str(self.clip)

    @property
    def squashing_source(self) -> str | None:
        """For ``"clip"``: why :attr:`squashing` (see :func:`clip_squashing`); ``None`` otherwise."""
        if self.defense != "clip":
            return None
        return "given" if self.clip is None else self.clip.source

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

    def window(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """The window this defence's patch can affect at ``image_size`` ``(height, width)``,
        clamped to the evidence map.

        Raises:
            ValueError: for ``"mask"``, the window covers the whole evidence map: masking
                would remove all evidence and leave nothing to decide on.
        """
        geo = self.geometry(image_size)
        window = _clamp_window(geo.window, geo.grid)
        self._check_something_left(window, geo.grid, geo.patch_size, window, tuple(image_size))
        return window

    def _check_something_left(self, window: tuple[int, int], grid: tuple[int, int], p: int,
                              required: tuple[int, int], image_size: tuple[int, int] | None) -> None:
        if self.defense != "mask" or tuple(window) != tuple(grid):
            return
        h, w = grid
        what = "masking removes all evidence and nothing is left to decide on"
        if tuple(required) != tuple(grid):
            raise ValueError(f"window {tuple(window)} covers the whole {h}x{w} evidence map: {what}; the {p} px patch "
                             f"needs only {required[0]}x{required[1]}")
        largest = self._largest_patch_leaving_evidence(grid, image_size)
        advice = (f"certify against a patch of at most {largest} px here, or use the clip defence" if largest else
                  "at this image size every patch does: use larger images, or the clip defence")
        raise ValueError(f"{_a(p)} {p} px patch covers the whole {h}x{w} evidence map (its window is "
                         f"{required[0]}x{required[1]}): {what}; {advice}")

    def _largest_patch_leaving_evidence(self, grid: tuple[int, int], image_size: tuple[int, int] | None) -> int:
        """The largest patch side whose window leaves some location out (0: none does)."""
        q, s = self.model.receptive_field, self.model.patch_stride
        side = min(image_size) if image_size is not None else min(q + s * n - 1 for n in grid)

        def covers(p: int) -> bool:
            if image_size is not None:
                window = affected_locations(self.model, image_size, p).window
            else:
                window = affected_window(self.model, grid, p)
            return all(a >= b for a, b in zip(window, grid))

        if not covers(side):
            return side
        lo, hi = 0, side  # windows grow with the patch: not covering at lo (or lo = 0), covering at hi
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if covers(mid) else (mid, hi)
        return lo

    # -- defended logits -------------------------------------------------------------

    def defend(self, evidence: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
        """Defended logits ``[N, C]`` from raw patch logits ``[N, C, h, w]`` and the window a
        patch can affect (in logit units: summed evidence per location).

        Raises:
            ValueError: for ``"mask"``, a window covering the whole map.
        """
        grid = tuple(evidence.shape[-2:])
        window = _clamp_window(tuple(window), grid)
        if self.defense == "mask" and window == grid:
            raise ValueError(f"window {window} covers the whole {grid[0]}x{grid[1]} evidence map: masking removes "
                             "all evidence and nothing is left to decide on")
        return self._defend_squashed(self.squash(evidence), window)

    def _defend_squashed(self, e: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
        h, w = e.shape[-2:]
        if self.defense != "mask":
            return e.mean((2, 3))
        return (e.sum((2, 3)) - _window_max(e, window)) / (h * w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Defended logits ``[N, classes]`` of images ``x``, in float64 like the
        certificates, so that their argmax is the certified prediction (float32 could
        round a near-tie either way).

        Raises:
            ValueError: for ``"mask"``, a patch whose window covers the whole evidence map.
        """
        window = self.window(tuple(x.shape[-2:]))
        return self.defend(self.model.patch_logits(x).double(), window)

    # -- certificates ------------------------------------------------------------------

    def evidence(self, x: torch.Tensor) -> torch.Tensor:
        """The raw patch logits ``[N, C, h, w]`` of images ``x`` with the model in eval mode
        (every submodule's mode is restored after): the evidence certificates need."""
        with _eval_mode(self.model):
            return self.model.patch_logits(x)

    @torch.no_grad()
    def certify(self, x: torch.Tensor, chunk: int = 16) -> Certificate:
        """Defended prediction, certificate and margin of every image of ``x`` ``[N, C, H, W]``.

        The evidence is computed in eval mode whatever the modules' modes, which are
        restored after (BatchNorm's running statistics are not updated).
        """
        with _eval_mode(self):
            return self.certify_evidence(self.model.patch_logits(x), chunk=chunk, image_size=tuple(x.shape[-2:]))

    @torch.no_grad()
    def certify_evidence(self, evidence: torch.Tensor, window: tuple[int, int] | None = None,
                         patch_size: int | None = None, chunk: int = 16, *,
                         image_size: tuple[int, int] | None = None) -> Certificate:
        """:meth:`certify` from raw patch logits ``[N, C, h, w]`` of the model in eval mode.

        Args:
            evidence: the patch logits (e.g. :meth:`evidence`).
            window: the window a patch can affect, or ``None`` (the default) to derive it
                from the model's geometry; a window smaller than that is refused, a larger
                one only weakens the bounds.
            patch_size: the patch's side in pixels; by default this defence's (which needs
                ``image_size`` when it is a share of the image).
            chunk: images per step (fewer where large maps or many classes need it).
            image_size: ``(height, width)`` of the images, for the exact geometry.

        Raises:
            ValueError: the model is in training mode (evidence from batch statistics has no
                certificate), a window smaller than the geometry's, a patch size that
                cannot be read without ``image_size``, or for ``"mask"`` a window covering
                the whole evidence map.
        """
        if evidence.dim() != 4:
            raise ValueError(f"evidence must be patch logits [N, classes, h, w], got shape {tuple(evidence.shape)}")
        self._refuse_training_mode()
        grid = tuple(evidence.shape[-2:])
        p, required = self._required_window(grid, patch_size, image_size)
        if window is None:
            window = required
        else:
            given = tuple(int(v) for v in window)
            window = _clamp_window(given, grid)
            if window[0] < required[0] or window[1] < required[1]:
                raise ValueError(f"window {given} is smaller than the {required[0]}x{required[1]} window {_a(p)} {p} px patch "
                                 f"can affect on this {grid[0]}x{grid[1]} evidence map: the certificate would miss "
                                 "locations the patch changes; leave window out to derive it (a larger one is fine)")
        self._check_something_left(window, grid, p, required, image_size)
        n, c, h, w = evidence.shape
        step = max(1, min(chunk, _STEP_BYTES // (8 * 2 * max(1, c * h * w))))
        preds, margins, removed = [], [], []
        for i in range(0, n, step):
            e = self.squash(evidence[i:i + step].double())
            pred = self._defend_squashed(e, window).argmax(1)
            preds.append(pred)
            if self.defense != "none":
                margin, corner = self._bounds(e, pred, window)
                margins.append(margin)
                removed.append(corner)
        device = evidence.device
        pred = torch.cat(preds) if preds else torch.empty(0, dtype=torch.long, device=device)
        if self.defense == "none":
            margin = torch.full(pred.shape, -math.inf, dtype=torch.float64, device=device)
        else:
            margin = torch.cat(margins) if margins else torch.empty(0, dtype=torch.float64, device=device)
        corners = None
        if self.defense == "mask":
            corners = torch.cat(removed) if removed else torch.empty(0, 2, dtype=torch.long, device=device)
        return Certificate(pred, margin > 0, margin, p, window, self.defense, corners, self.squashing,
                           self.squashing_source)

    def _refuse_training_mode(self) -> None:
        training = [name or type(self.model).__name__ for name, m in self.model.named_modules() if m.training]
        if training:
            raise ValueError(f"{type(self.model).__name__} is in training mode ({training[0]} and {len(training) - 1} "
                             "more modules), where BatchNorm normalizes with the batch's statistics and a sticker on "
                             "one image changes every location: certificates need the evidence of the model in eval "
                             "mode. Call model.eval() before computing the evidence, or use certify(images), which "
                             "does and restores the modes")

    def _required_window(self, grid: tuple[int, int], patch_size: int | None,
                         image_size: tuple[int, int] | None) -> tuple[int, tuple[int, int]]:
        """``(patch side, the window it can affect)`` on an evidence map of ``grid``."""
        if image_size is not None:
            geo = self.geometry(tuple(image_size))
            if tuple(geo.grid) != grid:
                raise ValueError(f"the evidence map is {grid[0]}x{grid[1]}, but a {image_size[0]}x{image_size[1]} "
                                 f"image gives {geo.grid[0]}x{geo.grid[1]}")
            if patch_size and int(patch_size) != geo.patch_size:
                raise ValueError(f"patch_size {patch_size} is not this defence's {self.patch_size!r}, "
                                 f"{geo.patch_size} px at {image_size[0]}x{image_size[1]}")
            return geo.patch_size, _clamp_window(geo.window, grid)
        if patch_size:
            p = int(patch_size)
        elif isinstance(self.patch_size, int) or (isinstance(self.patch_size, str) and (
                self.patch_size.strip().isdigit() or self.patch_size.strip().lower().endswith("px"))):
            p = patch_pixels(self.patch_size, (2**31, 2**31))
        else:
            raise ValueError(f"patch size {self.patch_size!r} is a share of the image: give certify_evidence the "
                             "image_size=(height, width) (or the patch_size in pixels)")
        if p < 1:
            raise ValueError(f"patch_size must be at least 1 pixel, got {patch_size}")
        return p, affected_window(self.model, grid, p)

    def _bounds(self, e: torch.Tensor, pred: torch.Tensor, window: tuple[int, int]
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Worst-case gap ``[n]`` over all window positions for squashed evidence ``e``, and
        for ``"mask"`` the corner ``[n, 2]`` of the window removed for the prediction."""
        h, w = e.shape[-2:]
        wh, ww = window
        e_pred = e.gather(1, pred[:, None, None, None].expand(-1, 1, h, w))[:, 0]  # [n, h, w]
        sums = _window_sums(e_pred, window)  # [n, nh, nw]
        outside_pred = e_pred.sum((1, 2))[:, None, None] - sums  # clean evidence outside each window
        upper = self._best_other_outside(e, pred, window)
        if self.defense == "clip":
            lo, hi = self.bounds
            lower = outside_pred + wh * ww * lo
            upper = upper + wh * ww * hi
        else:
            # The adversary zeroes the predicted class inside the window; the masking then
            # removes the largest remaining window of it.
            lower = outside_pred - _largest_window_left(e_pred, sums, window)
        margin = (lower - upper).flatten(1).amin(1) / (h * w)
        if self.defense != "mask":
            return margin, None
        flat = sums.flatten(1).argmax(1)
        return margin, torch.stack([flat // sums.shape[-1], flat % sums.shape[-1]], 1)

    @staticmethod
    def _best_other_outside(e: torch.Tensor, pred: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
        """``[n, nh, nw]``: the most clean evidence any class but the predicted one keeps
        outside each window position (a few classes at a time)."""
        n, c, h, w = e.shape
        best = e.new_full((n, h - window[0] + 1, w - window[1] + 1), -math.inf)
        step = _class_step(n, h, w)
        for k in range(0, c, step):
            part = e[:, k:k + step]
            outside = part.sum((2, 3))[:, :, None, None] - _window_sums(part, window)
            mine = torch.arange(k, k + part.shape[1], device=e.device)[None, :] == pred[:, None]
            best = torch.maximum(best, outside.masked_fill(mine[:, :, None, None], -math.inf).amax(1))
        return best

    def extra_repr(self) -> str:
        squashing = f", squashing={self.squashing!r}" if self.squashing else ""
        return f"patch_size={self.patch_size!r}, defense={self.defense!r}, bounds={self.bounds}{squashing}"


def certify(model: nn.Module, images: torch.Tensor, labels: torch.Tensor | None = None, *,
            patch_size: int | float | str | None = None, defense: str | None = None, **kwargs: Any) -> Certificate:
    """Certify a batch of normalized images against p x p patches anywhere in the image.

    The evidence is computed in eval mode; every module keeps its own mode afterwards.

    Args:
        model: a BagNet, or a :class:`RobustBagNet` (which brings its own patch size and
            defence); for ``defense="cleanser"`` any classifier, or a
            :class:`~bagnet.robust.PatchCleanser` (which brings its own).
        images: ``[N, C, H, W]`` normalized images.
        labels: optional ``[N]``; only checked for length here (use
            :meth:`Certificate.certified_correct` for certified accuracy).
        patch_size: side in pixels or area fraction (``"2%"``); required for a plain model.
        defense: ``"mask"`` (the default for a plain BagNet), ``"clip"``, ``"none"``, or
            ``"cleanser"`` (PatchCleanser's double masking, any classifier: see
            :meth:`~bagnet.robust.PatchCleanser.certify`).
        **kwargs: :class:`RobustBagNet` options (``clip_range``, ``tanh_scale``, ``tanh_shift``);
            for ``"cleanser"``, :class:`~bagnet.robust.PatchCleanser`'s (``masks``, k per
            axis, default 6; ``fill``; ``mean``; ``std``; ``chunk``).

    Returns:
        A :class:`Certificate`: defended prediction, certified flag and margin per image.

    Raises:
        ValueError: bad options, or for ``"mask"`` a patch whose window covers the whole
            evidence map (nothing would be left to decide on).
    """
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"{len(labels)} labels for {len(images)} images")
    if defense == "cleanser" or isinstance(model, PatchCleanser):
        if defense not in (None, "cleanser"):
            raise ValueError(f"a PatchCleanser is the cleanser defence, not {defense!r}; pass the plain model")
        return certify_cleanser(model, images, labels, patch_size=patch_size, **kwargs)
    if isinstance(model, RobustBagNet):
        if patch_size is not None or defense is not None or kwargs:
            raise ValueError("a RobustBagNet brings its own patch size and defence; pass the plain BagNet to change them")
        robust = model
    else:
        if patch_size is None:
            raise ValueError("certify needs patch_size (pixels, or an area fraction such as '2%')")
        robust = RobustBagNet(model, patch_size, defense or "mask", **kwargs)
    return robust.certify(images)
