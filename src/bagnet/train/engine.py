"""One epoch of training, one pass of evaluation, in the shape of torchvision's reference.

``train_one_epoch`` handles mixed precision, gradient accumulation, EMA updates,
batches that lost images to unreadable files, and a per-step learning-rate schedule.
``evaluate`` and the ``bagnet eval`` command share one per-batch loop,
:func:`iter_logits`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .distributed import SINGLE_PROCESS, DistInfo, all_reduce_sum
from .optim import ModelEma

logger = logging.getLogger(__name__)

__all__ = ["EpochStats", "autocast", "evaluate", "iter_logits", "topk_correct", "train_one_epoch"]


@dataclass
class EpochStats:
    """What one pass over the data measured (:func:`train_one_epoch`, :func:`evaluate`).

    Attributes:
        loss: mean loss per image.
        top1: top-1 accuracy in percent.
        top5: top-5 accuracy in percent.
        images: images seen (unreadable ones not counted).
        skipped: unreadable images skipped.
        seconds: wall time of the pass.
    """

    loss: float
    top1: float
    top5: float
    images: int
    skipped: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def _totals(loss_sum, correct1, correct5, images, skipped, start: float, info: DistInfo, device,
            labelled=None) -> EpochStats:
    """Sum the per-process counts over all processes and turn them into means.

    Accuracy is over the ``labelled`` images (default: all); outliers have no class.
    """
    labelled = images if labelled is None else labelled
    loss_sum, correct1, correct5, images, skipped, labelled = all_reduce_sum(
        [loss_sum, correct1, correct5, images, skipped, labelled], info, device
    )
    return EpochStats(
        loss=loss_sum / max(images, 1),
        top1=100.0 * correct1 / max(labelled, 1),
        top5=100.0 * correct5 / max(labelled, 1),
        images=int(images),
        skipped=int(skipped),
        seconds=time.perf_counter() - start,
    )


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """The autocast context for ``amp`` ('none', 'bf16' or 'fp16') on ``device``."""
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: Iterable[int] = (1, 5)) -> list[int]:
    """Number of samples whose target is among the k highest logits, for each k.

    A k larger than the number of classes counts every sample (it cannot miss).
    """
    ks = list(ks)
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hit = top == targets[:, None]
    return [int(hit[:, : min(k, kmax)].any(dim=1).sum()) for k in ks]


def _progress(iterable, enabled: bool, total: int | None, desc: str):
    if not enabled or not sys.stderr.isatty():
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # an optional extra; no bar then
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)


def _batch_is_empty_anywhere(n: int, info: DistInfo, device: torch.device) -> bool:
    # Every process must take part in every gradient all-reduce, so a batch that lost all
    # its images on one process is skipped by all of them together.
    if not info.enabled:
        return n == 0
    return all_reduce_sum([float(n == 0)], info, device)[0] > 0


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: Iterable,
    device: torch.device,
    *,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    scaler: torch.amp.GradScaler | None = None,
    amp: str = "none",
    accum_steps: int = 1,
    ema: ModelEma | None = None,
    ema_steps: int = 1,
    channels_last: bool = False,
    info: DistInfo = SINGLE_PROCESS,
    progress: bool = True,
    desc: str = "train",
) -> EpochStats:
    """Train for one pass over ``loader`` (batches of ``(images, targets, skipped)``).

    The optimizer steps every ``accum_steps`` batches (and after the last one); the
    scheduler, if given, steps with it. The loss is divided by ``accum_steps`` so the
    accumulated gradient is a mean, as with an ``accum_steps`` times larger batch.

    Returns:
        Mean loss and top-1/top-5 (percent) over the images of this process and all
        others, images, unreadable images skipped, and wall time.
    """
    model.train()
    try:
        total = len(loader)
    except TypeError:
        total = None
    loss_sum = correct1 = correct5 = images = skipped = labelled = 0.0
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    bar = _progress(loader, progress and info.is_main, total, desc)
    pending = 0  # micro-batches whose gradients have not been applied yet

    def step() -> None:
        nonlocal pending
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        pending = 0
        if scheduler is not None:
            scheduler.step()
        if ema is not None:
            ema.steps += 1  # a buffer, so it is checkpointed with the EMA weights
            if int(ema.steps) % ema_steps == 0:
                ema.update_parameters(model)

    for i, (x, y, n_skipped) in enumerate(bar):
        skipped += n_skipped
        if _batch_is_empty_anywhere(x.shape[0], info, device):
            continue
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        step_now = pending + 1 == accum_steps or (total is not None and i == total - 1)
        # DDP all-reduces on every backward; skip that until the micro-batch that steps.
        no_sync = info.enabled and not step_now and hasattr(model, "no_sync")
        with model.no_sync() if no_sync else contextlib.nullcontext():
            with autocast(device, amp):
                logits = model(x)
                loss = criterion(logits, y)
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"loss is {loss_value} at batch {i}; lower --lr or use --amp none")
            scaled = loss / accum_steps
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        pending += 1
        if step_now:
            step()
        n = x.shape[0]
        known = y >= 0  # outlier-exposure images (target -1) have no class to be right about
        c1, c5 = topk_correct(logits.detach().float()[known], y[known])
        loss_sum += loss_value * n
        correct1 += c1
        correct5 += c5
        images += n
        labelled += int(known.sum())
        if bar is not loader:
            bar.set_postfix(loss=f"{loss_value:.3f}", img_s=f"{images / (time.perf_counter() - start):.0f}")
        elif progress and info.is_main and total and (i + 1) % max(1, total // 10) == 0:
            # No terminal (a log file, a batch job): a line every tenth of an epoch instead.
            logger.info("%s: batch %d/%d, loss %.4f, %.1f img/s", desc, i + 1, total, loss_sum / max(images, 1),
                        images / (time.perf_counter() - start))
    if pending:  # the last batches were unreadable: apply what was accumulated before them
        if info.enabled:  # those gradients were kept local by no_sync; average them now
            for p in model.parameters():
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad)
                    p.grad /= info.world_size
        step()
    return _totals(loss_sum, correct1, correct5, images, skipped, start, info, device, labelled)


def iter_logits(
    model: nn.Module,
    loader: Iterable,
    device: torch.device,
    *,
    amp: str = "none",
    channels_last: bool = False,
    progress: bool = False,
    desc: str = "eval",
) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """Run ``model`` in eval mode over ``loader``; yields ``(logits, targets, skipped)``.

    Logits come back as float32 on the CPU. This is the one prediction loop of
    training-time evaluation and of ``bagnet eval``.
    """
    model.eval()
    try:
        total = len(loader)
    except TypeError:
        total = None
    with torch.inference_mode():
        for x, y, n_skipped in _progress(loader, progress, total, desc):
            if len(x) == 0:
                yield torch.empty(0, 0), y, n_skipped
                continue
            with autocast(device, amp):
                logits = forward_images(model, x, device, channels_last=channels_last)
            yield logits.float().cpu(), y, n_skipped


def forward_images(model: nn.Module, x: torch.Tensor | Sequence[torch.Tensor], device: torch.device, *,
                   channels_last: bool = False) -> torch.Tensor:
    """``model`` on a batch: a ``[B, C, H, W]`` tensor, or a list of ``[C, H, W]`` images of
    different sizes (whole images of several aspect ratios), run one size at a time and
    returned in the list's order."""
    if isinstance(x, torch.Tensor):
        groups = {tuple(x.shape[-2:]): list(range(len(x)))}
        images = x
    else:
        groups: dict[tuple[int, int], list[int]] = {}
        for i, t in enumerate(x):
            groups.setdefault(tuple(t.shape[-2:]), []).append(i)
        images = None
    out: torch.Tensor | None = None
    for idx in groups.values():
        batch = images if images is not None else torch.stack([x[i] for i in idx])
        batch = batch.to(device, non_blocking=True)
        if channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        logits = model(batch)
        if images is not None:
            return logits
        if out is None:
            out = logits.new_empty(len(x), *logits.shape[1:])
        out[torch.as_tensor(idx, device=logits.device)] = logits
    return out


def evaluate(
    model: nn.Module,
    criterion: nn.Module,
    loader: Iterable,
    device: torch.device,
    *,
    amp: str = "none",
    channels_last: bool = False,
    info: DistInfo = SINGLE_PROCESS,
    progress: bool = True,
    desc: str = "val",
) -> EpochStats:
    """Loss and top-1/top-5 (percent) over ``loader``, summed over all processes."""
    loss_sum = correct1 = correct5 = images = skipped = 0.0
    start = time.perf_counter()
    for logits, y, n_skipped in iter_logits(
        model, loader, device, amp=amp, channels_last=channels_last, progress=progress and info.is_main, desc=desc
    ):
        skipped += n_skipped
        if y.numel() == 0:
            continue
        c1, c5 = topk_correct(logits, y)
        loss_sum += float(criterion(logits, y)) * y.numel()
        correct1 += c1
        correct5 += c5
        images += y.numel()
    return _totals(loss_sum, correct1, correct5, images, skipped, start, info, device)
