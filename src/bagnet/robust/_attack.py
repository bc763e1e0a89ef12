"""A pixel-space adversarial sticker: PGD on a p x p patch, with a search over positions.

The attack the certificates are checked against, and the empirical robustness of models
that have no certificate (undefended BagNets, torchvision DNNs). It follows the usual
recipe of the patch-defence papers: a square sticker whose pixels may take any value of
the image range replaces the image inside it; projected gradient descent on its pixels
lowers the margin of the attacked class, first briefly at a grid of positions (the
position search), then longer at the most promising positions of each image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ._geometry import patch_pixels

__all__ = ["AttackResult", "patch_attack"]

# torchvision's ImageNet statistics, for models that carry none.
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class AttackResult:
    """The strongest sticker found for every image.

    Attributes:
        clean_prediction: ``[N]`` the model's prediction without a sticker.
        prediction: ``[N]`` the prediction with the strongest sticker found (the clean one
            where the image was not attacked because it was already wrong).
        flipped: ``[N]`` bool, some sticker tried changed the prediction away from the
            attacked class.
        position: ``[N, 2]`` (top, left) in pixels of the strongest sticker; -1 if none.
        images: ``[N, C, H, W]`` the normalized images with that sticker.
        patch_size: side p in pixels.
        tried: stickers evaluated per attacked image (positions x steps).
    """

    clean_prediction: torch.Tensor
    prediction: torch.Tensor
    flipped: torch.Tensor
    position: torch.Tensor
    images: torch.Tensor
    patch_size: int
    tried: int

    def correct(self, labels: torch.Tensor) -> torch.Tensor:
        """``[N]`` bool, right under attack: what accuracy under attack counts."""
        return self.prediction.cpu() == torch.as_tensor(labels).cpu()


def _positions(length: int, p: int, n: int) -> list[int]:
    """``n`` evenly spaced sticker starts in ``[0, length - p]``, both ends included."""
    last = length - p
    if n <= 1 or last == 0:
        return [last // 2]
    return sorted({round(k * last / (n - 1)) for k in range(n)})


def _normalization(model: nn.Module, mean, std, device) -> tuple[torch.Tensor, torch.Tensor]:
    inner = getattr(model, "model", model)  # a RobustBagNet's BagNet
    cfg = getattr(inner, "pretrained_cfg", None) or {}
    mean = mean if mean is not None else cfg.get("mean", _IMAGENET_MEAN)
    std = std if std is not None else cfg.get("std", _IMAGENET_STD)
    as_t = lambda v: torch.as_tensor(v, dtype=torch.float32, device=device).reshape(1, -1, 1, 1)  # noqa: E731
    return as_t(mean), as_t(std)


def _margin(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Attacked class's logit minus the best other: below 0 means the sticker won."""
    own = logits.gather(1, target[:, None])[:, 0]
    others = logits.scatter(1, target[:, None], -math.inf).amax(1)
    return own - others


def patch_attack(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    patch_size: int | float | str = "2%",
    *,
    steps: int = 20,
    step_size: float = 0.1,
    positions: int = 7,
    search_steps: int = 4,
    refine: int = 2,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    chunk: int = 64,
    seed: int = 0,
) -> AttackResult:
    """PGD on the pixels of a p x p sticker, at many positions, against any classifier.

    Images the model already gets wrong are not attacked. Every other image is attacked
    at ``positions`` x ``positions`` evenly spaced places for ``search_steps`` steps each
    from random sticker pixels; at the ``refine`` places where the margin dropped most,
    the attack continues for ``steps`` more steps. Every sticker tried is evaluated, and
    the one with the lowest margin is kept.

    Args:
        model: a classifier of normalized images (a BagNet, a :class:`RobustBagNet`, a
            torchvision model); it is used in eval mode.
        images: ``[N, C, H, W]`` normalized images.
        labels: ``[N]`` the classes to attack; ``None`` attacks every clean prediction.
        patch_size: side in pixels or area fraction (``"2%"``).
        steps: PGD steps at each refined position.
        step_size: PGD step in pixel units (image range [0, 1]), signed gradient.
        positions: sticker places per axis during the search.
        search_steps: PGD steps at every place of the search.
        refine: places per image that get ``steps`` more steps.
        mean: the normalization's mean of ``images`` (default: the model's, else ImageNet's).
        std: the normalization's standard deviation (default: the model's, else ImageNet's).
        chunk: image-position pairs per forward pass.
        seed: for the random sticker initialisation.
    """
    wrong = [f"{name}={value} (needs {need})" for name, value, ok, need in (
        ("steps", steps, steps >= 0, ">= 0"), ("search_steps", search_steps, search_steps >= 1, ">= 1"),
        ("positions", positions, positions >= 1, ">= 1"), ("refine", refine, refine >= 0, ">= 0"),
        ("step_size", step_size, step_size > 0, "> 0"), ("chunk", chunk, chunk >= 1, ">= 1")) if not ok]
    if wrong:
        raise ValueError(f"patch_attack: {', '.join(wrong)}")
    n, _, h, w = images.shape
    p = patch_pixels(patch_size, (h, w))
    device = images.device
    mean_t, std_t = _normalization(model, mean, std, device)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            clean = torch.cat([model(images[i:i + chunk]).argmax(1) for i in range(0, n, chunk)]) if n else \
                torch.empty(0, dtype=torch.long, device=device)
        target = clean if labels is None else torch.as_tensor(labels, device=device)
        attacked = (clean == target).nonzero()[:, 0].tolist()
        best = _Best(images, clean)
        places = [(t, left) for t in _positions(h, p, positions) for left in _positions(w, p, positions)]
        jobs = [(i, t, left, None) for i in attacked for t, left in places]
        stickers = _run(model, images, target, jobs, p, search_steps, step_size, mean_t, std_t, gen, chunk, best)
        if refine and steps:
            scores: dict[int, list] = {}
            for (i, t, left, _), (score, sticker) in zip(jobs, stickers):
                scores.setdefault(i, []).append((score, t, left, sticker))
            jobs = [(i, t, left, s) for i, rows in scores.items()
                    for _, t, left, s in sorted(rows, key=lambda r: r[0])[:refine]]
            _run(model, images, target, jobs, p, steps, step_size, mean_t, std_t, gen, chunk, best)
    finally:
        model.train(was_training)
    tried = len(places) * search_steps + (min(refine, len(places)) * steps if refine else 0)
    return AttackResult(clean, best.prediction, best.flipped, best.position, best.images, p, tried)


class _Best:
    """The lowest-margin sticker seen per image, and whether any sticker changed the prediction."""

    def __init__(self, images: torch.Tensor, clean: torch.Tensor):
        self.images = images.detach().clone()
        self.clean = clean
        self.prediction = clean.clone()
        self.margin = torch.full((len(images),), math.inf, device=images.device)
        self.position = torch.full((len(images), 2), -1, dtype=torch.long)
        self.flipped = torch.zeros(len(images), dtype=torch.bool)

    def update(self, idx: torch.Tensor, x: torch.Tensor, logits: torch.Tensor, margin: torch.Tensor,
               corners: torch.Tensor, target: torch.Tensor) -> None:
        pred = logits.argmax(1)
        self.flipped[idx.cpu()] |= (pred != target).cpu()
        for k in range(len(idx)):  # pairs of one image may share a chunk: compare one by one
            i = int(idx[k])
            if margin[k] < self.margin[i]:
                self.margin[i] = margin[k]
                self.prediction[i] = pred[k]
                self.images[i] = x[k]
                self.position[i] = corners[k].cpu()


def _run(model, images, target, jobs, p, steps, step_size, mean_t, std_t, gen, chunk, best) -> list:
    """PGD for every ``(image, top, left, start sticker or None)`` job; returns per job the
    final margin and the sticker pixels ``[C, p, p]``."""
    out = []
    c = images.shape[1]
    for k in range(0, len(jobs), chunk):
        part = jobs[k:k + chunk]
        idx = torch.tensor([j[0] for j in part], device=images.device)
        corners = torch.tensor([(j[1], j[2]) for j in part])
        x, tgt = images[idx], target[idx]
        init = torch.rand(len(part), c, p, p, generator=gen).to(images.device)
        for m, j in enumerate(part):
            if j[3] is not None:
                init[m] = j[3]
        sticker = init.requires_grad_(True)
        margin = torch.empty(0)
        for step in range(steps + 1):
            adv = _paste(x, sticker, corners, mean_t, std_t)
            with torch.enable_grad():
                logits = model(adv)
                margin = _margin(logits, tgt)
                grad = torch.autograd.grad(margin.sum(), sticker)[0] if step < steps else None
            best.update(idx, adv.detach(), logits.detach(), margin.detach(), corners, tgt)
            if grad is not None:
                with torch.no_grad():
                    sticker = (sticker - step_size * grad.sign()).clamp(0, 1).requires_grad_(True)
        out += [(float(margin[m].detach()), sticker[m].detach()) for m in range(len(part))]
    return out


def _paste(x: torch.Tensor, sticker: torch.Tensor, corners: torch.Tensor, mean_t: torch.Tensor,
           std_t: torch.Tensor) -> torch.Tensor:
    """``x`` with each sticker (pixels in [0, 1]) normalized and pasted at its corner."""
    p = sticker.shape[-1]
    rows = []
    for m in range(len(x)):
        t, left = int(corners[m, 0]), int(corners[m, 1])
        img = x[m]
        patch = (sticker[m:m + 1] - mean_t) / std_t
        inside = torch.cat([img[None, :, t:t + p, :left], patch, img[None, :, t:t + p, left + p:]], 3)
        rows.append(torch.cat([img[None, :, :t], inside, img[None, :, t + p:]], 2))
    return torch.cat(rows)
