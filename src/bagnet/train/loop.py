"""``train(config)``: a whole run, from an image folder to ``RUN_DIR/model.pt``.

RUN_DIR receives ``config.json`` (the resolved configuration), ``log.jsonl`` (one line
per epoch), TensorBoard events, ``last.pt`` and ``best.pt`` (resume checkpoints) and
``model.pt`` (the best weights as a bagnet model file), and ``model/`` (the same model as
``model.safetensors`` + ``config.json``, see :func:`bagnet.save_pretrained`). Only rank 0 writes.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, DistributedSampler, RandomSampler, Subset

from .._device import resolve_device
from .._io import write_text
from .._text import plural
from ..data.folder import ImageFolder, collate_skip, eval_transform, read_class_names, split_indices, train_transform
from ..data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from ..models import create_model, save_model_file, save_pretrained
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import TrainConfig, describe_clip_evidence, merge_for_resume
from .distributed import DistInfo, ShardSampler, barrier, cleanup_distributed, init_distributed
from .engine import EpochStats, evaluate, train_one_epoch
from .evidence import ClippedEvidence
from .optim import ModelEma, build_optimizer, build_scheduler
from .outliers import OutlierExposureLoss, OutlierImages

logger = logging.getLogger(__name__)


@dataclass
class _Data:
    classes: list[str]
    train: torch.utils.data.Dataset
    val: torch.utils.data.Dataset


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed python, numpy and torch; in deterministic mode also refuse nondeterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS needs this set before its first use to be reproducible.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; numpy and python follow it so
    # augmentations written with either are reproducible too.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def build_data(cfg: TrainConfig, mean: Sequence[float], std: Sequence[float], classes: list[str] | None = None) -> _Data:
    """Train and val datasets of ``cfg.data``; ``classes`` (from a checkpoint) must match.

    ``cfg.data`` holds ``train/<class>/`` and ``val/<class>/``, or ``train/<class>/`` with
    ``val_split``, or (with ``val_split``) the class folders themselves, as data sets
    without a split ship (Caltech-101).

    Raises:
        FileNotFoundError: no such layout.
        ValueError: fewer than two classes with images (nothing to learn).
    """
    root = Path(cfg.data)
    train_dir, val_dir = root / "train", root / "val"
    if not root.is_dir():
        raise FileNotFoundError(f"--data {root} does not exist")
    if not train_dir.is_dir():
        if not cfg.val_split:
            raise FileNotFoundError(
                f"{train_dir} does not exist; --data needs train/<class>/ and val/<class>/ folders, or "
                f"pass --val-split 0.1 to train on the class folders of {root} and hold out 10% of each"
            )
        if val_dir.is_dir():
            raise FileNotFoundError(f"{root} has a val/ folder but no train/ folder next to it")
        train_dir = root  # a folder of class folders, no split
    train_ds = ImageFolder(train_dir, transform=train_transform(cfg.img_size, mean, std, cfg.crop_scale), classes=classes)
    classes = list(train_ds.classes)
    with_images = [c for c in classes if c not in train_ds.empty_classes]
    if len(with_images) < 2:
        raise ValueError(
            f"{train_dir} has images of {plural(len(with_images), 'class', 'classes')}"
            + (f" ({', '.join(with_images)})" if with_images else "")
            + "; a classifier needs at least 2 classes, each a folder of images"
        )
    if cfg.val_split:
        indices_train, indices_val = split_indices(train_ds.targets, cfg.val_split, seed=cfg.seed)
        val_ds = copy.copy(train_ds)
        val_ds.transform = eval_transform(cfg.img_size, mean, std)
        logger.info("--val-split %.3g: %s of %s, %d to train on and %d held out for validation", cfg.val_split,
                    plural(len(train_ds), "image"), train_dir, len(indices_train), len(indices_val))
        return _Data(classes, Subset(train_ds, indices_train), Subset(val_ds, indices_val))
    if not val_dir.is_dir():
        raise FileNotFoundError(
            f"{val_dir} does not exist; add a val/ folder with the same classes, "
            "or pass --val-split 0.1 to hold out 10% of train/"
        )
    val_ds = ImageFolder(val_dir, transform=eval_transform(cfg.img_size, mean, std), classes=classes)
    return _Data(classes, train_ds, val_ds)


def _with_outliers(cfg: TrainConfig, data: _Data, mean, std) -> _Data:
    """Mix ``cfg.outliers`` (``outlier_repeat`` times) into the training set with target -1."""
    if not cfg.outliers:
        return data
    outliers = OutlierImages(cfg.outliers, transform=train_transform(cfg.img_size, mean, std, cfg.crop_scale))
    logger.info("--outliers: %d images of none of the classes, %d per epoch", len(outliers),
                len(outliers) * cfg.outlier_repeat)
    return _Data(data.classes, ConcatDataset([data.train, *[outliers] * cfg.outlier_repeat]), data.val)


def _check_classes(cfg: TrainConfig, model: nn.Module, classes: list[str]) -> None:
    own = model.pretrained_cfg.get("classes")
    if model.num_classes != len(classes) or (own is not None and list(own) != classes):
        raise ValueError(
            f"--weights {cfg.weights} has {plural(model.num_classes, 'class')}"
            + (f" ({', '.join(list(own)[:3])}, ...)" if own else "")
            + f" but {cfg.data} has {len(classes)} ({', '.join(classes[:3])}, ...); "
            "train from scratch or use weights trained on these classes"
        )


def _loaders(cfg: TrainConfig, data: _Data, info: DistInfo, device: torch.device):
    generator = torch.Generator().manual_seed(cfg.seed + info.rank)
    if info.enabled:
        sampler = DistributedSampler(data.train, num_replicas=info.world_size, rank=info.rank, seed=cfg.seed)
    else:
        sampler = RandomSampler(data.train, generator=generator)
    common = dict(
        batch_size=cfg.batch_size,
        num_workers=cfg.workers,
        collate_fn=collate_skip,
        pin_memory=device.type == "cuda",
        worker_init_fn=_seed_worker,
        generator=generator,
    )
    train_loader = DataLoader(data.train, sampler=sampler, drop_last=False, **common)
    val_sampler = ShardSampler(len(data.val), info) if info.enabled else None
    val_loader = DataLoader(data.val, sampler=val_sampler, shuffle=False, **common)
    return train_loader, val_loader, sampler, generator


class _RunFiles:
    """The files rank 0 writes into RUN_DIR (no-ops on other ranks)."""

    def __init__(self, out: Path, info: DistInfo, start_epoch: int):
        self.out, self.enabled = out, info.is_main
        self.tb = None
        if not self.enabled:
            return
        out.mkdir(parents=True, exist_ok=True)
        self._truncate_log(start_epoch)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            logger.warning("tensorboard is not installed; metrics go to log.jsonl only (pip install 'bagnet[train]')")
        else:
            # purge_step drops events of epochs after the checkpoint a resumed run restarts from.
            self.tb = SummaryWriter(str(out), purge_step=start_epoch + 1 if start_epoch else None)

    def _truncate_log(self, start_epoch: int) -> None:
        # Log lines are written before the checkpoint, so a run killed in between has a line
        # for an epoch it will train again; keep only the epochs the checkpoint holds.
        path = self.out / "log.jsonl"
        if not path.exists():
            return
        keep = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line)["epoch"] <= start_epoch:
                    keep.append(line)
            except (ValueError, KeyError, TypeError):
                pass  # a line cut short by a kill
        write_text(path, "".join(x + "\n" for x in keep))

    def write_config(self, cfg: TrainConfig, classes: list[str]) -> None:
        if self.enabled:
            write_text(self.out / "config.json", json.dumps({**cfg.to_dict(), "classes": classes}, indent=2) + "\n")

    def log_epoch(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.out / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self.tb is not None:
            for k, v in record.items():
                if k != "epoch" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k.replace("_", "/", 1), v, record["epoch"])
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _resume_state(cfg: TrainConfig, explicit: set[str]) -> tuple[TrainConfig, dict | None]:
    out = Path(cfg.out)
    if not cfg.resume:
        if (out / "last.pt").exists():
            raise ValueError(f"{out} already holds a run; add --resume to continue it, or choose another --out")
        return cfg.validate(), None
    path = out / "last.pt" if cfg.resume == "last" else Path(cfg.resume)
    ckpt = load_checkpoint(path)
    cfg = merge_for_resume(ckpt["config"], cfg, explicit)
    if ckpt["epoch"] >= cfg.epochs:
        raise ValueError(f"{path} already finished epoch {ckpt['epoch']} of --epochs {cfg.epochs}; raise --epochs to train on")
    logger.info("resuming %s from epoch %d", path, ckpt["epoch"])
    return cfg, ckpt


def _resume_schedule(optimizer: torch.optim.Optimizer, scheduler, stored_epochs: int, cfg: TrainConfig) -> None:
    """Set the learning rate of the next step from this sitting's schedule.

    The schedule is a function of the step and of ``--epochs``. A resumed run with the run's
    own ``--epochs`` gets the very rate the stored optimizer holds. With another
    ``--epochs`` the schedule is re-planned over the new length, from the current step on:
    the next step runs at the rate a run planned for that length has at this step, and the
    cosine decays from there to ``--min-lr`` at the new end. (The stored optimizer holds
    the rate the old plan gave, ``--min-lr`` for a finished run: a plain resume would take
    one step at it.)
    """
    before = optimizer.param_groups[0]["lr"]
    for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * factor(scheduler.last_epoch)
    if stored_epochs != cfg.epochs:
        logger.info(
            "--epochs %d (the run was planned for %d): the %s schedule is re-planned over %s from step %d; "
            "the next step runs at lr %.6g (the old plan: %.6g)",
            cfg.epochs, stored_epochs, cfg.schedule, plural(cfg.epochs, "epoch"), scheduler.last_epoch,
            optimizer.param_groups[0]["lr"], before,
        )


def train(cfg: TrainConfig, explicit: set[str] | frozenset[str] = frozenset()) -> Path:
    """Run training as ``cfg`` describes; returns the path of ``model.pt``.

    Args:
        cfg: the run's configuration.
        explicit: options the user set (compared against the stored run on resume).
    """
    cfg, ckpt = _resume_state(cfg, set(explicit))
    device = resolve_device(cfg.device)
    info = init_distributed(device)
    if device.type == "cuda" and info.enabled:
        device = torch.device("cuda", info.local_rank)
    # A deterministic run switches process-wide torch flags; give them back afterwards so a
    # program (or a test session) that trains once does not run every later op in
    # deterministic mode, where e.g. some autograd kernels refuse to run at all.
    flags = _torch_determinism_flags()
    try:
        return _run(cfg, ckpt, device, info)
    finally:
        cleanup_distributed(info)
        _restore_torch_determinism_flags(flags)


def _torch_determinism_flags() -> tuple[bool, bool, bool, bool]:
    return (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
    )


def _restore_torch_determinism_flags(flags: tuple[bool, bool, bool, bool]) -> None:
    enabled, warn_only, benchmark, deterministic = flags
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
    torch.backends.cudnn.benchmark = benchmark
    torch.backends.cudnn.deterministic = deterministic


def _run(cfg: TrainConfig, ckpt: dict | None, device: torch.device, info: DistInfo) -> Path:
    seed_everything(cfg.seed + info.rank, cfg.deterministic)
    # Initial weights bring their own normalization; from scratch it is ImageNet's.
    model = create_model(cfg.model, pretrained=cfg.weights, **cfg.model_kwargs) if cfg.weights else None
    mean, std = (model.pretrained_cfg["mean"], model.pretrained_cfg["std"]) if model else (IMAGENET_MEAN, IMAGENET_STD)
    data = build_data(cfg, list(mean), list(std), classes=ckpt["classes"] if ckpt else None)
    data = _with_outliers(cfg, data, list(mean), list(std))
    if model is None:
        model = create_model(cfg.model, num_classes=len(data.classes), **cfg.model_kwargs)
    else:
        _check_classes(cfg, model, data.classes)
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = ModelEma(model, cfg.ema_decay, device=device) if cfg.ema else None
    # The module whose logits are trained and validated: the model, or the clip defence
    # around it (no parameters of its own, so the optimizer, EMA and checkpoints still
    # see only the model's).
    aggregate = (lambda m: ClippedEvidence(m, *cfg.clip_evidence)) if cfg.clip_evidence else (lambda m: m)
    train_model = aggregate(model)
    if info.enabled:
        train_model = nn.parallel.DistributedDataParallel(train_model, device_ids=[device.index] if device.type == "cuda" else None)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    train_criterion = OutlierExposureLoss(cfg.outlier_weight, cfg.label_smoothing) if cfg.outliers else criterion
    optimizer = build_optimizer(model, cfg)
    train_loader, val_loader, sampler, generator = _loaders(cfg, data, info, device)
    steps_per_epoch = -(-len(train_loader) // cfg.accum_steps)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")

    start_epoch, best = 0, {"top1": -1.0}
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["lr_scheduler"])
        _resume_schedule(optimizer, scheduler, int(ckpt["config"].get("epochs", cfg.epochs)), cfg)
        scaler.load_state_dict(ckpt["scaler"])
        if ema is not None:
            ema.load_state_dict(ckpt["ema"])
        start_epoch, best = ckpt["epoch"], ckpt["best"]
        set_rng_state(ckpt["rng"][info.rank] if info.rank < len(ckpt["rng"]) else ckpt["rng"][0], generator)

    files = _RunFiles(Path(cfg.out), info, start_epoch)
    files.write_config(cfg, data.classes)
    logger.info(
        "training %s on %s of %s (val %d) for %s%s; writing to %s", cfg.model, plural(len(data.train), "image"),
        plural(len(data.classes), "class"), len(data.val), plural(cfg.epochs, "epoch"),
        f", logits = mean of {describe_clip_evidence(cfg.clip_evidence)} (train and val)" if cfg.clip_evidence else "",
        cfg.out,
    )
    try:
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            if isinstance(sampler, DistributedSampler):
                sampler.set_epoch(epoch)
            desc = f"epoch {epoch + 1}/{cfg.epochs}"
            lr = optimizer.param_groups[0]["lr"]
            tr = train_one_epoch(
                train_model, train_criterion, optimizer, train_loader, device, scheduler=scheduler, scaler=scaler,
                amp=cfg.amp, accum_steps=cfg.accum_steps, ema=ema, ema_steps=cfg.ema_steps,
                channels_last=cfg.channels_last, info=info, progress=cfg.progress, desc=desc,
            )
            kw = dict(amp=cfg.amp, channels_last=cfg.channels_last, info=info, progress=cfg.progress)
            val = evaluate(aggregate(model), criterion, val_loader, device, **kw)
            ema_val = evaluate(aggregate(ema.module), criterion, val_loader, device, desc="val ema", **kw) if ema else None
            chosen = ema_val or val  # the EMA weights are the ones shipped when --ema is on
            record = _record(epoch + 1, lr, tr, val, ema_val, time.perf_counter() - t0)
            is_best = chosen.top1 > best["top1"]
            if is_best:
                best = {"top1": chosen.top1, "top5": chosen.top5, "epoch": epoch + 1}
            record["best_top1"] = best["top1"]
            files.log_epoch(record)
            _save(cfg, files, info, epoch + 1, best, is_best, data.classes, model, ema, optimizer, scheduler,
                  scaler, generator, device)
            logger.info(
                "epoch %d/%d: loss %.4f, train top-1 %.2f, val top-1 %.2f top-5 %.2f%s, %.0f img/s, %.0f s%s",
                epoch + 1, cfg.epochs, tr.loss, tr.top1, val.top1, val.top5,
                f" (EMA {ema_val.top1:.2f})" if ema_val else "", tr.images_per_s, record["time"],
                f", {record['skipped']} unreadable images skipped" if record["skipped"] else "",
            )
            if cfg.stop_after is not None and epoch + 1 >= cfg.stop_after and epoch + 1 < cfg.epochs:
                logger.info("stopping after epoch %d as asked; continue with --resume", epoch + 1)
                break
    finally:
        files.close()
    return Path(cfg.out) / "model.pt"


def _record(epoch: int, lr: float, tr: EpochStats, val: EpochStats, ema_val: EpochStats | None, seconds: float):
    record = {
        "epoch": epoch,
        "lr": lr,
        "train_loss": tr.loss,
        "train_top1": tr.top1,
        "train_top5": tr.top5,
        "train_img_s": tr.images_per_s,
        "train_images": tr.images,
        "val_images": val.images,
        "val_loss": val.loss,
        "val_top1": val.top1,
        "val_top5": val.top5,
        "skipped": tr.skipped + val.skipped,
        "time": seconds,
    }
    if ema_val is not None:
        record.update(ema_val_loss=ema_val.loss, ema_val_top1=ema_val.top1, ema_val_top5=ema_val.top5)
    return record


def _gather_rng(generator: torch.Generator, info: DistInfo) -> list[dict]:
    """Every rank's RNG state (ranks draw different augmentations), for rank 0 to save."""
    state = rng_state(generator)
    if not info.enabled:
        return [state]
    states = [None] * info.world_size
    torch.distributed.all_gather_object(states, state)
    return states


def _save(cfg, files, info, epoch, best, is_best, classes, model, ema, optimizer, scheduler, scaler, generator,
          device) -> None:
    rngs = _gather_rng(generator, info)
    if info.is_main:
        state = {
            "model_name": cfg.model,
            "model_args": dict(model.model_args),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "epoch": epoch,
            "best": best,
            "classes": classes,
            # What eval, explain, serve and analyze need to use last.pt/best.pt as a model.
            "meta": {"mean": list(model.pretrained_cfg["mean"]), "std": list(model.pretrained_cfg["std"]),
                     "img_size": cfg.img_size, "class_names": read_class_names(cfg.data, classes)},
            "config": cfg.to_dict(),
            "rng": rngs,
        }
        out = Path(cfg.out)
        if is_best:
            save_checkpoint(out / "best.pt", state)
            shipped = ema.module if ema is not None else model
            meta = {
                "classes": classes,
                "class_names": read_class_names(cfg.data, classes),
                "img_size": cfg.img_size,
                "dataset": cfg.data,
                "metrics": {"top1": best["top1"], "top5": best["top5"], "epoch": epoch,
                            # the val accuracy of the defended logits, not of the plain mean
                            **({"logits": describe_clip_evidence(cfg.clip_evidence)} if cfg.clip_evidence else {})},
                # how the model was trained, for whoever certifies it
                "train_evidence": describe_clip_evidence(cfg.clip_evidence) if cfg.clip_evidence else "mean",
                "command": cfg.command,
                "config": cfg.to_dict(),
            }
            save_model_file(out / "model.pt", shipped, meta)
            save_pretrained(shipped, out / "model", meta)  # the same model without pickle
        # last.pt is written after best.pt/model.pt: a kill in between resumes this epoch's
        # predecessor, which rewrites all three.
        save_checkpoint(out / "last.pt", state)
    barrier(info)
