"""Resume checkpoints: everything a killed run needs to continue as if never stopped.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts only, so it loads
with ``torch.load(weights_only=True)``: no pickled code runs when a run resumes. The
random number generators' states are stored as tensors and lists for that reason.
Files are written atomically (temporary file, then rename), so a kill at any moment
leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import atomic_save

CHECKPOINT_FORMAT = "bagnet-train/1"


def rng_state(loader_generator: torch.Generator | None = None) -> dict[str, Any]:
    """States of python's, numpy's, torch's (and CUDA's) and the data loader's generators."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
        "numpy": {
            "name": np_name,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "loader": loader_generator.get_state() if loader_generator is not None else None,
    }
    return state


def set_rng_state(state: dict[str, Any], loader_generator: torch.Generator | None = None) -> None:
    """Restore what :func:`rng_state` captured."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    if loader_generator is not None and state.get("loader") is not None:
        loader_generator.set_state(state["loader"])


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write a resume checkpoint atomically; ``state`` must hold plain data and tensors."""
    return atomic_save({"format": CHECKPOINT_FORMAT, **state}, path)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a resume checkpoint written by :func:`save_checkpoint`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a bagnet resume checkpoint (e.g. a model file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint to resume from at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for truncated or foreign files
        raise ValueError(f"{path} is not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a bagnet training checkpoint (last.pt or best.pt of a run)")
    return ckpt
