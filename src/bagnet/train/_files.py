"""What a training run writes into RUN_DIR: ``config.json``, ``log.jsonl`` (and TensorBoard
events), the resumable checkpoints ``last.pt`` and ``best.pt``, and the best weights as a
model file (``model.pt``) and a pickle-free folder (``model/``). Rank 0 writes; the other
ranks only take part in gathering every rank's RNG state."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from .._io import write_text
from ..models import save_model_file, save_pretrained
from .checkpoint import rng_state, save_checkpoint
from .config import TrainConfig, describe_clip_evidence
from .distributed import DistInfo, barrier
from .engine import EpochStats

logger = logging.getLogger(__name__)


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
            "meta": dict(model.pretrained_cfg),
            "config": cfg.to_dict(),
            "rng": rngs,
        }
        out = Path(cfg.out)
        if is_best:
            save_checkpoint(out / "best.pt", state)
            shipped = ema.module if ema is not None else model
            metrics = {"top1": best["top1"], "top5": best["top5"], "epoch": epoch,
                       # the val accuracy of the defended logits, not of the plain mean
                       **({"logits": describe_clip_evidence(cfg.clip_evidence)} if cfg.clip_evidence else {}),
                       # what these numbers are: the split model.pt was chosen on
                       "split": "held out of train (--val-split)" if cfg.val_split else "val/",
                       "selection": selection_note(cfg)}
            meta = {**model.pretrained_cfg, "metrics": metrics}
            # save_model_file and save_pretrained add the shipped model's own pretrained_cfg to
            # the meta: it must be this run's description, never the initial weights'.
            shipped.pretrained_cfg = dict(model.pretrained_cfg)
            save_model_file(out / "model.pt", shipped, meta)
            save_pretrained(shipped, out / "model", meta)  # the same model without pickle
        # last.pt is written after best.pt/model.pt: a kill in between resumes this epoch's
        # predecessor, which rewrites all three.
        save_checkpoint(out / "last.pt", state)
    barrier(info)


def selection_note(cfg: TrainConfig) -> str:
    """How ``model.pt`` was chosen, and what that means for the accuracy measured on ``val/``."""
    if cfg.val_split:
        return ("the epoch with the best top-1 on the images held out of train (--val-split): val/ was not "
                "looked at, so bagnet eval on it is a test accuracy")
    return ("the epoch with the best top-1 on val/: a choice made on the split it is scored on, so that "
            "accuracy is optimistic; --val-split F chooses on images held out of train instead")
