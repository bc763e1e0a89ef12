"""Device names (``auto``, ``cpu``, ``cuda``, ``cuda:N``) resolved to a ``torch.device``.

Training, evaluation, analyses and the apps take a device by name; the command line only
maps ``--device`` onto :func:`resolve_device`.
"""

from __future__ import annotations

import torch

__all__ = ["MAP_DTYPES", "check_dtype", "fast_bfloat16", "resolve_amp", "resolve_device", "resolve_dtype"]


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


# Names the command line and the library accept for the arithmetic of evidence maps.
_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "float64": torch.float64, "fp64": torch.float64,
}
MAP_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def check_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """``dtype`` (a ``torch.dtype`` or a name such as ``"bf16"``), checked to be one of
    float32, float64, bfloat16 and float16.

    Raises:
        ValueError: any other dtype or name (``"auto"`` included: see :func:`resolve_dtype`).
    """
    if isinstance(dtype, str):
        if dtype.lower() not in _DTYPES:
            raise ValueError(f"dtype {dtype!r} is not one of float32, bfloat16, float16, float64")
        return _DTYPES[dtype.lower()]
    if dtype not in MAP_DTYPES:
        raise ValueError(f"dtype must be torch.float32, torch.float64, torch.bfloat16 or torch.float16, got {dtype}")
    return dtype


def fast_bfloat16(device: torch.device | str = "cpu") -> str | None:
    """Why bfloat16 matrix products are fast on ``device`` (a phrase), or None where they are not.

    CPUs: AMX tiles or AVX-512 BF16 instructions; CUDA: compute capability 8.0 (Ampere) or later.
    """
    device = torch.device(device)
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        return f"{torch.cuda.get_device_name(device)} has bfloat16 tensor cores" if major >= 8 else None
    if device.type != "cpu":
        return None
    # Private but long-standing probes (torch >= 2.1); absent ones mean "unknown", i.e. no.
    if getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)():
        return "this CPU has AMX bfloat16 tiles"
    if getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)():
        return "this CPU has AVX-512 BF16 instructions"
    return None


def resolve_dtype(name: str | torch.dtype, device: torch.device | str = "cpu") -> tuple[torch.dtype, str | None]:
    """The dtype ``name`` means on ``device``, and for ``"auto"`` a line saying what it chose and why.

    ``"auto"`` is bfloat16 where :func:`fast_bfloat16` finds bfloat16 matrix units, else float32.

    Raises:
        ValueError: an unknown name.
    """
    if isinstance(name, str) and name.lower() == "auto":
        why = fast_bfloat16(device)
        if why:
            return torch.bfloat16, f"--dtype auto: bfloat16 ({why}); maps differ slightly from float32, see docs/precision.md"
        return torch.float32, None
    try:
        return check_dtype(name), None
    except ValueError:
        raise ValueError(f"--dtype {name!r} is not one of auto, float32, bfloat16, float16 (or bf16, fp16)") from None


def resolve_amp(amp: str, device: torch.device | str = "cpu") -> tuple[str, str | None]:
    """The mixed-precision mode training uses for ``amp`` on ``device``, and a line to log.

    ``"auto"`` is ``"bf16"`` where :func:`fast_bfloat16` finds bfloat16 units, else ``"none"``
    (float32). An explicit ``"bf16"`` on a CPU without them is kept, with a warning line: there
    autocast emulates bfloat16, and a ResNet-18 training step ran about 13 times slower than
    in float32 (an AVX2-only AMD EPYC; ``benchmarks/train.py --amp both``).
    """
    device = torch.device(device)
    why = fast_bfloat16(device)
    if amp == "auto":
        if why:
            return "bf16", f"--amp auto: bf16 ({why})"
        return "none", f"--amp auto: float32 ({device.type.upper()} has no fast bfloat16)"
    if amp == "bf16" and device.type == "cpu" and not why:
        return "bf16", ("--amp bf16 on a CPU without AMX or AVX-512 BF16: bfloat16 is emulated and training "
                        "runs many times slower than float32 (about 13x for ResNet-18 on an AVX2 CPU); "
                        "--amp auto chooses for the machine")
    return amp, None
