"""``train(config)``: a whole run, from an image folder to ``RUN_DIR/model.pt``.

RUN_DIR receives ``config.json`` (the resolved configuration), ``log.jsonl`` (one line
per epoch), TensorBoard events, ``last.pt`` and ``best.pt`` (resume checkpoints) and
``model.pt`` (the best weights as a bagnet model file), and ``model/`` (the same model as
``model.safetensors`` + ``config.json``, see :func:`bagnet.save_pretrained`). Only rank 0 writes.
"""

from __future__ import annotations

import copy
import dataclasses
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

from .._device import resolve_amp, resolve_device
from .._io import check_writable
from .._text import plural
from ..data.folder import (
    ImageFolder,
    RandomMasks,
    collate_skip,
    eval_transform,
    read_class_names,
    split_indices,
    train_transform,
)
from ..data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from ..models import (
    CheckpointMismatchError,
    UnnamedWeightsError,
    create_model,
    load_model,
    load_state_dict_strict,
)
from ._files import _record, _RunFiles, _save, selection_note
from .checkpoint import load_checkpoint, set_rng_state
from .config import (
    TrainConfig,
    check_dependent_options,
    describe_clip_evidence,
    merge_for_resume,
    set_options,
    train_masks,
)
from .distributed import DistInfo, ShardSampler, cleanup_distributed, init_distributed
from .engine import evaluate, train_one_epoch
from .evidence import ClippedEvidence
from .optim import ModelEma, build_optimizer, build_scheduler
from .outliers import OutlierExposureLoss, OutlierImages
from .split import record_val_split

logger = logging.getLogger(__name__)


@dataclass
class _Data:
    classes: list[str]
    train: torch.utils.data.Dataset
    val: torch.utils.data.Dataset
    # with --val-split: which images were held out (see bagnet.train.split), for the model file
    val_split: dict | None = None


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


def _train_transform(cfg: TrainConfig, mean: Sequence[float], std: Sequence[float]):
    """The training augmentation, with ``--mask-patches`` masks after the normalization (their
    fill 0 is the mean colour, as PatchCleanser masks by default)."""
    masking = train_masks(cfg)
    masks = RandomMasks(masking["masks"], tuple(masking["mask_size"])) if masking else None
    return train_transform(cfg.img_size, mean, std, cfg.crop_scale, masks=masks)


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
    train_ds = ImageFolder(train_dir, transform=_train_transform(cfg, mean, std), classes=classes)
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
        record = record_val_split(train_dir, train_ds.samples, indices_val, cfg.val_split, cfg.seed)
        return _Data(classes, Subset(train_ds, indices_train), Subset(val_ds, indices_val), record)
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
    outliers = OutlierImages(cfg.outliers, transform=_train_transform(cfg, mean, std))
    logger.info("--outliers: %d images of none of the classes, %d per epoch", len(outliers),
                len(outliers) * cfg.outlier_repeat)
    return _Data(data.classes, ConcatDataset([data.train, *[outliers] * cfg.outlier_repeat]), data.val, data.val_split)


def _initial_model(cfg: TrainConfig) -> nn.Module:
    """The model ``--weights`` holds, with its own head; without ``--model`` the weights
    name it (a registered tag, a model file or folder, a run folder, last.pt/best.pt)."""
    try:
        if cfg.model:
            return create_model(cfg.model, pretrained=cfg.weights, **cfg.model_kwargs)
        return load_model(cfg.weights, **cfg.model_kwargs)
    except UnnamedWeightsError:
        raise ValueError(f"--weights {cfg.weights} holds a plain state dict, which does not say which model it "
                         "belongs to; add --model NAME (see `bagnet models`)") from None


def _classifier_name(model: nn.Module) -> str:
    """The classifier's module name: a BagNet's ``get_classifier()``, else the last linear
    layer (torchvision's ``fc``, ``classifier.3``, ``heads.head``, ...)."""
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    last = None
    for name, module in model.named_modules():
        if head is not None and module is head and name:
            return name
        if isinstance(module, nn.Linear):
            last = name
    if last is None:
        raise ValueError(f"{getattr(model, 'model_name', type(model).__name__)} has no linear classifier to replace "
                         "for new classes; train it from scratch (no --weights)")
    return last


def _fit_head(cfg: TrainConfig, source: nn.Module, classes: list[str]) -> nn.Module:
    """``source`` if its outputs are ``classes``, else the same network with a new head for
    them and every other weight from ``source`` (all of them must load)."""
    own = source.pretrained_cfg.get("classes")
    if own is not None and list(own) == classes:
        return source
    data_name = Path(cfg.data).resolve().name
    if own is None and source.num_classes == len(classes):
        # a plain state dict with the right head size: the old behaviour, continue its head
        logger.warning("--weights %s names no classes; its %s are taken to be those of %s in folder order (%s)",
                       cfg.weights, plural(source.num_classes, "output"), data_name, ", ".join(classes[:5]))
        return source
    model = create_model(source.model_name, **{**source.model_args, "num_classes": len(classes)})
    prefix = _classifier_name(model) + "."
    state = {k: v for k, v in source.state_dict().items() if not k.startswith(prefix)}
    state.update({k: v for k, v in model.state_dict().items() if k.startswith(prefix)})
    try:
        load_state_dict_strict(model, state)
    except CheckpointMismatchError as e:
        raise ValueError(f"--weights {cfg.weights} does not fit {source.model_name} with a new head: {e}") from None
    shown = f" ({', '.join(list(own)[:3])}{', ...' if len(own) > 3 else ''})" if own else ""
    logger.info("new head for %s (%s); all other weights from %s; its %d-class head%s is dropped",
                plural(len(classes), "class"), data_name, cfg.weights, source.num_classes, shown)
    return model


def _model_meta(cfg: TrainConfig, data: _Data, mean: Sequence[float], std: Sequence[float]) -> dict[str, Any]:
    """What the trained model is: its ``pretrained_cfg`` and the meta of model.pt and model/
    (``metrics`` are added when saved). Built anew, so nothing of the initial weights'
    metadata survives: their classes, sizes, metrics, nor a threshold calibrated for them
    (``unknown``, written by ``bagnet calibrate``)."""
    names = read_class_names(cfg.data, data.classes)
    meta: dict[str, Any] = {
        "mean": list(mean),
        "std": list(std),
        "classes": list(data.classes),
        **({"class_names": names} if names else {}),
        # evaluated and served at the training size unless packaging changes it later
        "img_size": cfg.img_size,
        "train_img_size": cfg.img_size,  # the RandomResizedCrop it was trained on
        "dataset": cfg.data,
        # how the model was trained, for whoever certifies it
        "train_evidence": describe_clip_evidence(cfg.clip_evidence) if cfg.clip_evidence else "mean",
        **({"train_masking": train_masks(cfg)} if cfg.mask_patches else {}),
        "command": cfg.command,
        "config": cfg.to_dict(),
    }
    if cfg.weights:
        meta["initial_weights"] = cfg.weights
    if data.val_split is not None:
        meta["val_split"] = data.val_split
    return meta


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


def _resume_state(cfg: TrainConfig, explicit: set[str]) -> tuple[TrainConfig, dict | None]:
    out = Path(cfg.out)
    if cfg.out:
        check_writable(out, "--out", folder=True)
    given = set_options(cfg, explicit)
    if not cfg.resume:
        if (out / "last.pt").exists():
            raise ValueError(f"{out} already holds a run; add --resume to continue it, or choose another --out")
        check_dependent_options(cfg, given)
        return cfg.validate(), None
    path = out / "last.pt" if cfg.resume == "last" else Path(cfg.resume)
    ckpt = load_checkpoint(path)
    cfg = merge_for_resume(ckpt["config"], cfg, explicit)
    check_dependent_options(cfg, given)  # against the run's switches: --ema may come from the stored run
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
    # Initial weights bring their own normalization; from scratch it is ImageNet's. A resumed
    # run has its own in the checkpoint (and needs the initial weights no more).
    source = _initial_model(cfg) if cfg.weights and ckpt is None else None
    if ckpt is not None:
        stored = ckpt.get("meta") or {}
        mean, std = stored.get("mean", IMAGENET_MEAN), stored.get("std", IMAGENET_STD)
    elif source is not None:
        mean, std = source.pretrained_cfg["mean"], source.pretrained_cfg["std"]
        if not cfg.model:
            cfg = dataclasses.replace(cfg, model=source.model_name)  # the weights named it
    else:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    data = build_data(cfg, list(mean), list(std), classes=ckpt["classes"] if ckpt else None)
    data = _with_outliers(cfg, data, list(mean), list(std))
    if ckpt is not None:
        model = create_model(ckpt["model_name"], **ckpt["model_args"])  # its weights are loaded below
    elif source is not None:
        model = _fit_head(cfg, source, data.classes)
    else:
        model = create_model(cfg.model, num_classes=len(data.classes), **cfg.model_kwargs)
    model.pretrained_cfg = _model_meta(cfg, data, mean, std)
    model = model.to(device)
    # The precision this machine trains in: config.json keeps what was asked (auto), every
    # log.jsonl record the precision its epoch ran in.
    amp, amp_note = resolve_amp(cfg.amp, device)
    if amp_note and info.is_main:
        (logger.info if cfg.amp == "auto" else logger.warning)(amp_note)
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
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")

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
    masking = train_masks(cfg)
    logger.info(
        "training %s on %s of %s (val %d) for %s%s%s; writing to %s", cfg.model, plural(len(data.train), "image"),
        plural(len(data.classes), "class"), len(data.val), plural(cfg.epochs, "epoch"),
        f", logits = mean of {describe_clip_evidence(cfg.clip_evidence)} (train and val)" if cfg.clip_evidence else "",
        f", {plural(masking['masks'], 'mask')} of {masking['mask_size'][0]}x{masking['mask_size'][1]} px per training "
        f"image (PatchCleanser's masks for a {masking['sticker_px']} px sticker, {cfg.cleanser_masks} per axis)"
        if masking else "",
        cfg.out,
    )
    if not cfg.val_split and info.is_main and cfg.epochs > 1:
        logger.warning("model.pt will be %s", selection_note(cfg))
    try:
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            if isinstance(sampler, DistributedSampler):
                sampler.set_epoch(epoch)
            desc = f"epoch {epoch + 1}/{cfg.epochs}"
            lr = optimizer.param_groups[0]["lr"]
            tr = train_one_epoch(
                train_model, train_criterion, optimizer, train_loader, device, scheduler=scheduler, scaler=scaler,
                amp=amp, accum_steps=cfg.accum_steps, ema=ema, ema_steps=cfg.ema_steps,
                channels_last=cfg.channels_last, info=info, progress=cfg.progress, desc=desc,
            )
            kw = dict(amp=amp, channels_last=cfg.channels_last, info=info, progress=cfg.progress)
            val = evaluate(aggregate(model), criterion, val_loader, device, **kw)
            ema_val = evaluate(aggregate(ema.module), criterion, val_loader, device, desc="val ema", **kw) if ema else None
            chosen = ema_val or val  # the EMA weights are the ones shipped when --ema is on
            record = _record(epoch + 1, lr, tr, val, ema_val, time.perf_counter() - t0)
            record.update(amp=amp, channels_last=cfg.channels_last)
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
