"""PatchCleanser: certified robustness to adversarial patches for any image classifier.

Xiang, Mahloujifar, Mittal, *PatchCleanser: Certifiably Robust Defense against Adversarial
Patches for Any Image Classifier*, USENIX Security 2022, https://arxiv.org/abs/2108.09135.

The defence needs nothing of the model but its predictions. A *mask set* of rectangles is
laid over the image so that every p x p sticker position lies entirely inside at least one
mask (:func:`mask_set`); a masked image has the mask's pixels replaced by a constant.

- Inference, *double masking* (the paper's Algorithm 1): classify the image under every
  mask (the first round). If the one-mask predictions agree, that is the prediction
  (case I). Otherwise, for each mask whose prediction differs from the majority (in mask
  order), classify the image under that mask combined with every mask (the second round);
  the first such mask whose second-round predictions all agree gives the prediction
  (case II); if none does, the first round's majority (case III).
- Certificate (the paper's certification of double masking): if the model predicts the same label y on the image
  under every pair of masks (every mask with itself included), no sticker covered by the
  mask set can change the double-masking prediction from y: the mask covering the sticker
  removes it, so every prediction made with that mask is a clean one, and the three cases
  of Algorithm 1 can only return y.

A certificate therefore classifies ``n + n(n - 1) / 2`` masked images per image for
``n`` masks (666 for the paper's 6 x 6 set); inference classifies ``n`` and, where the
first round disagrees, up to ``n - 1`` more per disagreeing mask (pairs computed once are
reused). Both are batched across images and masks, in chunks of ``chunk`` images.

The vote is not differentiable. :meth:`PatchCleanser.forward`, what
:func:`~bagnet.robust.patch_attack` attacks, returns the one-mask predictions' mean
softmax (differentiable through the model on every masked copy: the attack's surrogate)
plus a constant 2 for the double-masking prediction, so that its argmax is exactly the
defence's decision.

.. note::
   The mask fill: the authors' code replaces the masked pixels of the *normalized* input
   by 0, the normalization's mean colour; that is the default here (``fill="mean"``).
   ``fill="black"`` writes pixel value 0 instead (``-mean / std`` per channel), and a
   number is written into the normalized input as it is.

.. note::
   The majority of the first round breaks ties towards the smallest class index (the
   paper leaves it open; any rule keeps the certificate sound).

.. note::
   Certificates assume the model classifies a masked image the same way whichever other
   images share its batch. In float arithmetic a batch of another size may round a logit
   differently, which matters only where two logits of one masked image tie to the last
   bits; the model runs in eval mode (BatchNorm on batch statistics would let one image's
   sticker change another's prediction).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ._attack import _normalization
from ._certificate import Certificate, _eval_mode
from ._geometry import _a, patch_pixels

__all__ = ["CleanserDecision", "MaskSet", "PatchCleanser", "mask_set"]

DEFAULT_MASKS = 6
"""Masks per axis of the paper's default mask set (6 x 6 = 36 masks)."""

FILLS = ("mean", "black")
"""The named mask fills; a number is also accepted (written into the normalized input)."""

# float32 logits the certificate of one group of images may hold: images are taken in
# groups that fit, whatever the number of classes and masks.
_LOGIT_BYTES = 64 * 2**20


def _axis(length: int, p: int, k: int) -> tuple[int, int, tuple[int, ...]]:
    """Mask size, stride and starts along one axis of ``length`` pixels for a ``p`` px sticker
    and at most ``k`` masks.

    A sticker starting at ``a`` (``0 <= a <= length - p``) lies inside the mask starting at
    ``b`` iff ``a + p - m <= b <= a``: an interval of ``m - p + 1`` starts. Starts ``s``
    apart, the first at 0 and the last at ``length - m``, hit every such interval iff
    ``s <= m - p + 1``, so ``m = p + s - 1``; ``k`` starts reach ``length - m`` iff
    ``(k - 1) s >= length - p - s + 1``, i.e. ``s >= (length - p + 1) / k``. Hence
    ``s = ceil((length - p + 1) / k)`` and ``m = p + s - 1`` (at most ``length``): the
    paper's mask stride and size. The starts are ``0, s, 2s, ...`` up to ``length - m``,
    plus ``length - m`` itself where the stride does not land on it; that makes at most
    ``k`` masks, fewer where ``s`` rounds up.
    """
    stride = -(-(length - p + 1) // k)
    size = min(p + stride - 1, length)
    last = length - size
    starts = list(range(0, last + 1, stride))
    if starts[-1] != last:
        starts.append(last)
    return size, stride, tuple(starts)


@dataclass(frozen=True)
class MaskSet:
    """PatchCleanser's mask set for one image size and sticker: every p x p sticker position
    lies entirely inside at least one mask.

    Attributes:
        image_size: ``(height, width)`` of the input.
        patch_size: side p of the square sticker in pixels.
        masks_per_axis: k, the most masks along each axis (the computation budget).
        mask_size: ``(rows, cols)`` of every mask: ``p + s - 1`` per axis (at most the side).
        stride: ``(rows, cols)``, s = ``ceil((side - p + 1) / k)`` per axis.
        rows: the masks' top edges.
        cols: the masks' left edges. Mask ``i`` has top edge ``rows[i // len(cols)]`` and left
            edge ``cols[i % len(cols)]``.
    """

    image_size: tuple[int, int]
    patch_size: int
    masks_per_axis: int
    mask_size: tuple[int, int]
    stride: tuple[int, int]
    rows: tuple[int, ...]
    cols: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.rows) * len(self.cols)

    @property
    def corners(self) -> list[tuple[int, int]]:
        """``(top, left)`` of every mask, in mask order (row by row)."""
        return [(r, c) for r in self.rows for c in self.cols]

    @property
    def certification_passes(self) -> int:
        """Masked images a certificate classifies per image: every mask, every pair of masks."""
        n = len(self)
        return n + n * (n - 1) // 2

    def keep(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Boolean ``[masks, H, W]``: ``False`` inside each mask, ``True`` where the image stays."""
        (h, w), (mh, mw) = self.image_size, self.mask_size
        out = torch.ones(len(self), h, w, dtype=torch.bool, device=device)
        for i, (top, left) in enumerate(self.corners):
            out[i, top:top + mh, left:left + mw] = False
        return out

    def covering(self, top: int, left: int) -> list[int]:
        """The masks that hold the whole sticker with top-left corner ``(top, left)``."""
        h, w = self.image_size
        p, (mh, mw) = self.patch_size, self.mask_size
        if not (0 <= top <= h - p and 0 <= left <= w - p):
            raise ValueError(f"sticker corner ({top}, {left}) is outside 0..{h - p} x 0..{w - p}")
        return [i for i, (r, c) in enumerate(self.corners)
                if r <= top and top + p <= r + mh and c <= left and left + p <= c + mw]

    def describe(self) -> str:
        """``"36 masks (6 x 6) of 64x64 px, stride 33x33 px"``."""
        (mh, mw), (sh, sw) = self.mask_size, self.stride
        return (f"{len(self)} masks ({len(self.rows)} x {len(self.cols)}) of {mh}x{mw} px, stride {sh}x{sw} px, "
                f"against a {self.patch_size} px sticker")


def mask_set(image_size: tuple[int, int] | int, patch_size: int | float | str,
             masks: int = DEFAULT_MASKS) -> MaskSet:
    """PatchCleanser's k x k mask set for a p x p sticker on an ``image_size`` image.

    Per axis of n pixels: stride ``s = ceil((n - p + 1) / k)`` and mask size
    ``m = p + s - 1`` (clamped to n), masks at ``0, s, 2s, ...`` and at ``n - m``; every
    sticker position then lies inside at least one mask (see :func:`_axis` for the
    derivation). Non-square images get their own stride and size per axis.

    Args:
        image_size: ``(height, width)``, or one side.
        patch_size: the sticker's side in pixels, or its share of the image area (``"2%"``).
        masks: k, the most masks per axis (the paper's computation budget; default 6).

    Raises:
        ValueError: k below 1, a sticker that does not fit, or a mask covering the whole
            image (every masked image would be the same blank image).
    """
    h, w = (image_size, image_size) if isinstance(image_size, int) else (int(image_size[0]), int(image_size[1]))
    if isinstance(masks, bool) or not isinstance(masks, int) or masks < 1:
        raise ValueError(f"masks per axis must be a whole number of at least 1, got {masks!r}")
    if h < 1 or w < 1:
        raise ValueError(f"image size must be positive, got {h} x {w}")
    p = patch_pixels(patch_size, (h, w))
    mh, sh, rows = _axis(h, p, masks)
    mw, sw, cols = _axis(w, p, masks)
    if (mh, mw) == (h, w):
        advice = ("use more masks per axis or a smaller sticker" if p < max(h, w) else
                  "the sticker covers the whole image: use a smaller sticker")
        raise ValueError(f"{_a(p)} {p} px sticker with {masks} mask{'s' if masks != 1 else ''} per axis needs a {mh}x{mw} px "
                         f"mask, the whole {h}x{w} image: every masked image would be blank and nothing is left to "
                         f"classify; {advice}")
    return MaskSet((h, w), p, masks, (mh, mw), (sh, sw), rows, cols)


@dataclass
class CleanserDecision:
    """Double-masking predictions of a batch of images, and how they were reached.

    Attributes:
        prediction: ``[N]`` the defended prediction.
        case: ``[N]`` 1 (the first round agreed), 2 (a disagreeing mask's second round
            agreed) or 3 (the first round's majority).
        passes: ``[N]`` masked images the model classified for each image.
        first_round: ``[N, masks]`` the one-mask predictions.
    """

    prediction: torch.Tensor
    case: torch.Tensor
    passes: torch.Tensor
    first_round: torch.Tensor


def _majority(labels: torch.Tensor) -> int:
    """The most frequent label; ties go to the smallest."""
    return int(torch.bincount(labels).argmax())


def decide(prediction_map: torch.Tensor) -> tuple[int, int, int | None]:
    """Algorithm 1 of the paper on one image's two-mask predictions ``[masks, masks]``
    (``[a, b]``: the image under masks a and b; the diagonal is the first round).

    Returns:
        ``(prediction, case, recovered_by)``: case 1, 2 or 3 as in :class:`CleanserDecision`,
        and for case 2 the disagreeing mask whose second round all agreed (else ``None``).
    """
    first = prediction_map.diagonal()
    if bool((first == first[0]).all()):
        return int(first[0]), 1, None
    majority = _majority(first)
    for r0 in (first != majority).nonzero()[:, 0].tolist():
        if bool((prediction_map[r0] == first[r0]).all()):
            return int(first[r0]), 2, r0
    return majority, 3, None


def _fill_value(model: nn.Module, fill: str | float, channels: int, mean, std, device, dtype) -> torch.Tensor:
    """``[1, C, 1, 1]``: what a mask writes into the normalized input."""
    if isinstance(fill, str):
        if fill == "mean":
            return torch.zeros(1, channels, 1, 1, device=device, dtype=dtype)
        if fill != "black":
            raise ValueError(f"unknown mask fill {fill!r}; use 'mean', 'black' or a number")
        mean_t, std_t = _normalization(model, mean, std, device)
        if mean_t.numel() != channels or std_t.numel() != channels:
            raise ValueError(f"fill 'black' needs the normalization of {channels}-channel images, but the mean has "
                             f"{mean_t.numel()} values; pass mean and std")
        return (-mean_t / std_t).to(dtype)
    value = float(fill)
    if not math.isfinite(value):
        raise ValueError(f"mask fill must be finite, got {fill!r}")
    return torch.full((1, channels, 1, 1), value, device=device, dtype=dtype)


def _check_fill(fill: str | float) -> str | float:
    if isinstance(fill, str):
        if fill not in FILLS:
            try:
                return _check_fill(float(fill))
            except ValueError:
                raise ValueError(f"unknown mask fill {fill!r}; use 'mean', 'black' or a number") from None
        return fill
    if isinstance(fill, bool) or not isinstance(fill, (int, float)) or not math.isfinite(float(fill)):
        raise ValueError(f"mask fill must be 'mean', 'black' or a finite number, got {fill!r}")
    return float(fill)


class PatchCleanser(nn.Module):
    """Any image classifier defended by PatchCleanser's double masking against p x p stickers.

    ``forward`` returns defended scores whose argmax is the double-masking prediction (see
    :meth:`forward`); :meth:`predict` returns that prediction and how it was reached;
    :meth:`certify` the certificate.

    Args:
        model: a classifier of normalized images ``[N, C, H, W] -> [N, classes]`` (a BagNet,
            a torchvision model, anything).
        patch_size: the sticker to defend against: side in pixels, or area share (``"2%"``)
            of each input image.
        masks: k, the most masks per axis (default 6, the paper's).
        fill: what masked pixels become: ``"mean"`` (0 in the normalized input, the
            authors' code; default), ``"black"`` (pixel value 0), or a number written into
            the normalized input.
        mean: the normalization's mean, for ``fill="black"`` (default: the model's, else
            ImageNet's).
        std: the normalization's standard deviation (default: the model's, else ImageNet's).
        chunk: masked images per forward pass of the model.

    Raises:
        ValueError: bad ``masks``, ``fill`` or ``chunk``.

    .. note::
       ``forward`` follows the module's mode, as any module does; :meth:`predict` and
       :meth:`certify` always run the model in eval mode and give every submodule its own
       mode back.
    """

    def __init__(self, model: nn.Module, patch_size: int | float | str = "2%", masks: int = DEFAULT_MASKS, *,
                 fill: str | float = "mean", mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 chunk: int = 32):
        super().__init__()
        if isinstance(masks, bool) or not isinstance(masks, int) or masks < 1:
            raise ValueError(f"masks per axis must be a whole number of at least 1, got {masks!r}")
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"chunk must be a whole number of at least 1, got {chunk!r}")
        self.model = model
        self.patch_size = patch_size
        self.masks = masks
        self.fill = _check_fill(fill)
        self.mean, self.std = mean, std
        self.chunk = chunk
        self._keep: dict[tuple, torch.Tensor] = {}
        # Mirror the model's mode, as RobustBagNet does (the wrapper's own flag only).
        self.training = model.training

    def mask_set(self, image_size: tuple[int, int]) -> MaskSet:
        """This defence's mask set at ``image_size`` ``(height, width)``."""
        return mask_set(tuple(image_size), self.patch_size, self.masks)

    # -- batched masked predictions --------------------------------------------------

    def _keep_masks(self, masks: MaskSet, device: torch.device) -> torch.Tensor:
        key = (masks.image_size, masks.patch_size, str(device))
        if key not in self._keep:
            self._keep = {key: masks.keep(device)}  # one size at a time: whole images vary
        return self._keep[key]

    def _logits(self, x: torch.Tensor, image: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                masks: MaskSet) -> torch.Tensor:
        """``[J, classes]``: the model on image ``image[j]`` under masks ``a[j]`` and ``b[j]``
        (one mask where they are equal), ``chunk`` masked images per pass."""
        keep = self._keep_masks(masks, x.device)
        fill = _fill_value(self.model, self.fill, x.shape[1], self.mean, self.std, x.device, x.dtype)
        out = []
        for s in range(0, len(image), self.chunk):
            i, ka, kb = image[s:s + self.chunk], a[s:s + self.chunk], b[s:s + self.chunk]
            kept = (keep[ka] & keep[kb])[:, None]
            out.append(self.model(torch.where(kept, x[i], fill)))
        if not out:
            return x.new_empty(0, 0)
        return torch.cat(out)

    def _first_round(self, x: torch.Tensor, masks: MaskSet) -> torch.Tensor:
        """``[N, masks, classes]``: the logits of every image under every mask."""
        n, m = len(x), len(masks)
        image = torch.arange(n, device=x.device).repeat_interleave(m)
        mask = torch.arange(m, device=x.device).repeat(n)
        return self._logits(x, image, mask, mask, masks).reshape(n, m, -1)

    def _second_rounds(self, x: torch.Tensor, masks: MaskSet, first: torch.Tensor) -> CleanserDecision:
        """Algorithm 1 from the first round's predictions ``first [N, masks]``.

        Second rounds run in waves: each wave tries, for every image still undecided, its
        next disagreeing mask (in mask order) that no pair classified so far rules out, and
        classifies the pairs of that mask not yet known. Each pair of masks is classified
        at most once per image (the pair (a, b) is the pair (b, a))."""
        n, m = first.shape
        device = x.device
        first = first.cpu()
        # known[i, a, b]: image i under masks a and b, -1 where not classified (yet)
        known = torch.full((n, m, m), -1, dtype=torch.long)
        idx = torch.arange(m)
        known[:, idx, idx] = first
        passes = torch.full((n,), m, dtype=torch.long)
        majority = nn.functional.one_hot(first, int(first.max()) + 1 if first.numel() else 1).sum(1).argmax(1)
        unanimous = (first == first[:, :1]).all(1)
        prediction = torch.where(unanimous, first[:, 0], majority)
        case = torch.where(unanimous, 1, 3)
        disagree = first != majority[:, None]
        undecided = ~unanimous
        tried = torch.zeros(n, m, dtype=torch.bool)
        while bool(undecided.any()):
            ruled_out = ((known != -1) & (known != first[:, :, None])).any(2)
            candidates = disagree & ~tried & ~ruled_out & undecided[:, None]
            undecided &= candidates.any(1)  # the rest keep the majority (case III)
            images = undecided.nonzero()[:, 0]
            if not len(images):
                break
            r0 = candidates[images].int().argmax(1)  # the first candidate of each image
            tried[images, r0] = True
            todo = known[images, r0] == -1  # [U, m]
            u, r1 = todo.nonzero(as_tuple=True)
            if len(u):
                i, a = images[u], r0[u]
                preds = self._logits(x, i.to(device), a.to(device), r1.to(device), masks).argmax(1).cpu()
                known[i, a, r1] = preds
                known[i, r1, a] = preds
                passes += torch.bincount(i, minlength=n)
            label = first[images, r0]
            agreed = (known[images, r0] == label[:, None]).all(1)
            prediction[images[agreed]] = label[agreed]
            case[images[agreed]] = 2
            undecided[images[agreed]] = False
        return CleanserDecision(prediction.to(device), case, passes, first.to(device))

    # -- inference ---------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Defended scores ``[N, classes]`` whose argmax is the double-masking prediction.

        The scores are the one-mask predictions' mean softmax (each class's smoothed share
        of the first round's votes, in [0, 1]) plus 2 for the predicted class. The vote is
        not differentiable; the mean softmax is, through the model on every masked copy,
        and is what a gradient attack (:func:`~bagnet.robust.patch_attack`) follows, while
        the constant 2 makes the argmax exactly the defence's decision (so that an attack
        counts only stickers that change the defended prediction).
        """
        masks = self.mask_set(tuple(x.shape[-2:]))
        if not len(x):
            return x.new_empty(0, 0)
        logits = self._first_round(x, masks)
        with torch.no_grad():
            decision = self._second_rounds(x, masks, logits.argmax(-1))
        votes = logits.float().softmax(-1).mean(1)
        return votes + 2 * nn.functional.one_hot(decision.prediction, votes.shape[1]).to(votes.dtype)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> CleanserDecision:
        """The double-masking prediction of every image of ``x`` ``[N, C, H, W]`` (the
        paper's Algorithm 1), with the model in eval mode."""
        with _eval_mode(self.model):
            masks = self.mask_set(tuple(x.shape[-2:]))
            if not len(x):
                empty = torch.empty(0, dtype=torch.long)
                return CleanserDecision(empty.to(x.device), empty, empty, torch.empty(0, len(masks), dtype=torch.long))
            return self._second_rounds(x, masks, self._first_round(x, masks).argmax(-1))

    # -- certificates ------------------------------------------------------------------

    def _pair_logits(self, x: torch.Tensor, masks: MaskSet):
        """Yield ``(first image, logits [g, pairs, classes])`` for groups of images of ``x``:
        each image under every pair of masks ``a <= b`` of :func:`torch.triu_indices` (the
        single masks where ``a == b``), as many images at a time as :data:`_LOGIT_BYTES` allow."""
        m = len(masks)
        a, b = torch.triu_indices(m, m, device=x.device)
        pairs, group, i0 = len(a), 1, 0  # the first image tells the number of classes
        while i0 < len(x):
            part = x[i0:i0 + group]
            g = len(part)
            image = torch.arange(g, device=x.device).repeat_interleave(pairs)
            logits = self._logits(part, image, a.repeat(g), b.repeat(g), masks).reshape(g, pairs, -1)
            yield i0, logits
            i0 += g
            group = max(1, _LOGIT_BYTES // (4 * pairs * max(1, logits.shape[-1])))

    @torch.no_grad()
    def prediction_maps(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, masks, masks]``: the prediction of every image of ``x`` under every pair of
        masks (symmetric; the diagonal is the first round), with the model in eval mode."""
        with _eval_mode(self.model):
            masks = self.mask_set(tuple(x.shape[-2:]))
            m = len(masks)
            a, b = torch.triu_indices(m, m, device=x.device)
            out = torch.empty(len(x), m, m, dtype=torch.long, device=x.device)
            for i0, logits in self._pair_logits(x, masks):
                top = logits.argmax(-1)
                out[i0:i0 + len(top), a, b] = top
                out[i0:i0 + len(top), b, a] = top
            return out

    @torch.no_grad()
    def certify(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> Certificate:
        """Double-masking prediction, certificate and margin of every image of ``x``.

        An image is certified iff the model predicts the same label under every pair of
        masks (each mask with itself included); that label is then the double-masking
        prediction, and no sticker the mask set covers can change it. The prediction is
        Algorithm 1 applied to those predictions (its second rounds are among the pairs).

        The margin is the smallest gap, over those masked images, between the logit of the
        prediction and the largest other logit (in the model's logit units, float64): at
        least 0 when certified (0 only at an exact tie the argmax broke towards the
        prediction), at most 0 otherwise; how far the weakest masked image is from
        changing (or from reaching) the prediction. It is not a bound on what a sticker can
        do: the certificate itself is the vote.

        Args:
            x: ``[N, C, H, W]`` normalized images.
            labels: optional ``[N]``, only checked for length.

        Raises:
            ValueError: labels of another length, or a mask set that cannot be built.
        """
        if labels is not None and len(labels) != len(x):
            raise ValueError(f"{len(labels)} labels for {len(x)} images")
        with _eval_mode(self.model):
            masks = self.mask_set(tuple(x.shape[-2:]))
            m = len(masks)
            a, b = torch.triu_indices(m, m)
            preds, certified, margins = [], [], []
            for _, logits in self._pair_logits(x, masks):
                top = logits.argmax(-1).cpu()  # [g, pairs]
                for k in range(len(top)):
                    full = torch.empty(m, m, dtype=torch.long)
                    full[a, b] = top[k]
                    full[b, a] = top[k]
                    label, _, _ = decide(full)
                    scores = logits[k].to(torch.float64, copy=True)
                    own = scores[:, label].clone()
                    scores[:, label] = -math.inf
                    margins.append((own - scores.amax(-1)).amin() if scores.shape[-1] > 1
                                   else own.new_tensor(math.inf))
                    certified.append(bool((top[k] == label).all()))
                    preds.append(label)
        device = x.device
        return Certificate(
            torch.tensor(preds, dtype=torch.long, device=device),
            torch.tensor(certified, dtype=torch.bool, device=device),
            torch.stack(margins).to(device) if margins else torch.empty(0, dtype=torch.float64, device=device),
            masks.patch_size, masks.mask_size, "cleanser", masks=len(masks), passes=masks.certification_passes,
        )

    def extra_repr(self) -> str:
        return f"patch_size={self.patch_size!r}, masks={self.masks}, fill={self.fill!r}, chunk={self.chunk}"


def certify_cleanser(model: nn.Module, images: torch.Tensor, labels: torch.Tensor | None = None, *,
                     patch_size: int | float | str | None = None, **kwargs: Any) -> Certificate:
    """:func:`~bagnet.robust.certify` with ``defense="cleanser"``: ``model`` is any classifier
    (``kwargs`` are :class:`PatchCleanser`'s options) or a :class:`PatchCleanser`; see
    :meth:`PatchCleanser.certify`."""
    if isinstance(model, PatchCleanser):
        if patch_size is not None or kwargs:
            raise ValueError("a PatchCleanser brings its own patch size and masks; pass the plain model to change them")
        return model.certify(images, labels)
    if patch_size is None:
        raise ValueError("certify needs patch_size (pixels, or an area fraction such as '2%')")
    return PatchCleanser(model, patch_size, **kwargs).certify(images, labels)
