"""Device names (``auto``, ``cpu``, ``cuda``, ``cuda:N``) resolved to a ``torch.device``.

Training, evaluation, analyses and the apps take a device by name; the command line only
maps ``--device`` onto :func:`resolve_device`.
"""

from __future__ import annotations

import torch

__all__ = ["resolve_device"]


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """The device ``name`` means: ``"auto"`` is CUDA when available, else the CPU.

    Raises:
        ValueError: ``name`` is not a device, or it asks for CUDA where there is none.
    """
    if isinstance(name, torch.device):
        device = name
    elif name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(name)
        except (RuntimeError, TypeError):
            raise ValueError(f"device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} was asked for, but no CUDA device is available")
    return device
