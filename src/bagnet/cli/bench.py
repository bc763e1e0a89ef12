"""``bagnet bench``: inference speed of BagNets and torchvision classifiers, side by side.

Models are model specs as every command reads them: ``NAME`` (its published weights),
``NAME@random`` (random weights: nothing is downloaded, which is all timing needs),
``NAME@WEIGHTS``, or model files and run folders of ``bagnet train``.

All models run in one process on the same random batch, in interleaved rounds (every
model once per round, the order reversed on every other round) after a warm-up, so
that load from other processes hits every model alike. The table shows the median
images/s, its ratio to ResNet-50 in the same mode (when ``resnet50`` is measured),
multiply-adds per image and peak memory of one forward pass.

Peak memory is, on CUDA, ``torch.cuda.max_memory_allocated`` above what was allocated
before the call; on CPU, the growth of the process's resident set during the call
(``VmHWM`` after resetting it through ``/proc/self/clear_refs``, minus ``VmRSS`` before;
Linux only), which counts oneDNN's buffers too, unlike PyTorch's allocator statistics.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .._text import plural
from ._common import add_device_args

if TYPE_CHECKING:
    import torch

MODE_HELP = (
    "plain: eval mode as built, float32, contiguous; fused: BatchNorm folded (BagNets: also the merged "
    "stem, and one image per pass on the CPU) and channels-last, exact; bf16: fused in bfloat16, not exact"
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="images/s of BagNets against torchvision models", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="bagnet33@random,resnet50@random",
                   help="comma-separated model specs: NAME (published weights), NAME@random (random weights, "
                        "nothing downloaded), NAME@WEIGHTS, or model files and run folders of `bagnet train` "
                        "(default: bagnet33@random,resnet50@random)")
    p.add_argument("--mode", default="fused", help=f"comma-separated inference modes (default: fused). {MODE_HELP}")
    p.add_argument("--batch-size", type=int, default=16, help="images per timed forward pass")
    p.add_argument("--img-size", type=int, default=224, help="side of the random square input, in pixels")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds (default 3); the median is reported")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per model first (default 1, at least 1)")
    p.add_argument("--threads", type=int, default=None, help="intra-op CPU threads (default: PyTorch's choice)")
    add_device_args(p)
    p.add_argument("--json", default=None, metavar="OUT", help="also write every measurement here as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from .._io import check_writable
    from ._common import resolve_device

    if args.json:
        check_writable(args.json, "--json")
    names = _split(args.models, "--models")
    modes = _split(args.mode, "--mode")
    if args.batch_size < 1 or args.img_size < 1:
        raise ValueError("--batch-size and --img-size must be positive")
    if args.repeats < 1 or args.warmup < 1:
        raise ValueError("--repeats and --warmup must be at least 1")
    if args.threads is not None and args.threads < 1:
        raise ValueError("--threads must be at least 1")
    device = resolve_device(args.device)
    threads = torch.get_num_threads()
    try:
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        report = benchmark(names, modes, batch_size=args.batch_size, img_size=args.img_size, repeats=args.repeats,
                           warmup=args.warmup, device=device)
    finally:  # a process-wide setting: leave it as found for callers of main()
        torch.set_num_threads(threads)
    print_table(report)
    if args.json:
        _write_json(report, Path(args.json))
        print(f"json: {args.json}")
    return 0


def _split(text: str, option: str) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise ValueError(f"{option} is empty; give a comma-separated list")
    if len(set(items)) != len(items):
        raise ValueError(f"{option} names something twice: {text}")
    return items


def benchmark(
    names: list[str],
    modes: list[str],
    *,
    batch_size: int,
    img_size: int,
    repeats: int,
    warmup: int = 1,
    device: str | torch.device | None = None,
) -> dict:
    """Measure every (model, mode) pair in interleaved rounds; the report as a JSON-able dict.

    Raises:
        ValueError: unknown model or mode, or an image size a model cannot take.
    """
    import torch

    from ..models import INFERENCE_MODES, create_model, prepare_for_inference
    from ..models._profile import count_params
    from ..models._spec import load_spec, parse_spec

    device = torch.device("cpu") if device is None else torch.device(device)
    unknown = [m for m in modes if m not in INFERENCE_MODES]
    if unknown:
        raise ValueError(f"unknown --mode {unknown[0]!r}; choose from {', '.join(INFERENCE_MODES)}")
    images = torch.randn(batch_size, 3, img_size, img_size, generator=torch.Generator().manual_seed(0))
    memory = _PeakMemory(device)
    entries, gmacs, loaded, archs = [], {}, {}, {}
    for name in names:
        # Check every model on the meta device first (free), so bad input fails before any timing.
        # Entries with weights are read now: they say which architecture they are.
        spec = parse_spec(name)
        if spec.random:
            arch = (spec.model, {})
        else:
            loaded[name] = load_spec(spec)
            arch = (loaded[name].model_name, loaded[name].model_args)
        archs[name] = arch[0]
        with torch.device("meta"):
            q = getattr(create_model(arch[0], **arch[1]), "receptive_field", 1)
        if img_size < q:
            raise ValueError(f"{name} sees {q}x{q} patches; use --img-size {q} or more")
        try:
            gmacs.update({(name, mode): _gmacs(arch, INFERENCE_MODES[mode]["fuse"], img_size) for mode in modes})
        except (RuntimeError, ValueError) as err:  # e.g. pooled down to nothing at a small --img-size
            raise ValueError(f"{name} cannot take {img_size} px images: {err}") from err
    for name in names:
        base = (loaded.pop(name) if name in loaded else create_model(archs[name])).eval()
        for mode in modes:
            settings = INFERENCE_MODES[mode]
            model = prepare_for_inference(base, **settings).to(device)
            fmt = torch.channels_last if settings["channels_last"] else torch.contiguous_format
            x = images.to(device=device, dtype=settings["dtype"]).contiguous(memory_format=fmt)
            entries.append({
                "model": name,
                "architecture": archs[name],
                "mode": mode,
                "exact": settings["dtype"] == torch.float32,
                "bn_folded": not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()),
                "params_m": count_params(model) / 1e6,
                "gmacs_per_image": gmacs[name, mode],
                "_model": model,
                "_x": x,
            })
        del base

    load_before = _loadavg()
    with torch.inference_mode():
        for e in entries:
            for i in range(warmup):
                last = i == warmup - 1
                try:
                    with memory if last else contextlib.nullcontext():
                        e["_model"](e["_x"])
                except (RuntimeError, ValueError) as err:
                    raise ValueError(f"{e['model']} ({e['mode']}) at {img_size} px: {err}") from err
            e["peak_memory_mb"] = memory.peak_mb
        for r in range(repeats):
            for e in entries if r % 2 == 0 else reversed(entries):
                wall, cpu = _time_call(e["_model"], e["_x"], device)
                e.setdefault("seconds", []).append(wall)
                e.setdefault("cpu_seconds", []).append(cpu)
    load_after = _loadavg()

    results = []
    for e in entries:
        rates = [batch_size / s for s in e["seconds"]]
        row = {k: v for k, v in e.items() if not k.startswith("_")}
        row["images_per_s_rounds"] = rates
        row["images_per_s"] = statistics.median(rates)
        row["gmacs_per_s"] = row["images_per_s"] * row["gmacs_per_image"]
        results.append(row)
    for row in results:
        ref = next((r for r in results if r["architecture"] == "resnet50" and r["mode"] == row["mode"]), None)
        row["ratio_to_resnet50"] = row["images_per_s"] / ref["images_per_s"] if ref else None
    return {
        "format": "bagnet-bench/1",
        "config": {
            "models": names,
            "modes": modes,
            "batch_size": batch_size,
            "img_size": img_size,
            "repeats": repeats,
            "warmup": warmup,
            "device": str(device),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(),
            "loadavg_before": load_before,
            "loadavg_after": load_after,
            "memory": memory.kind,
        },
        "results": results,
    }


def _gmacs(arch: tuple[str, dict], fuse: bool, img_size: int) -> float:
    """Multiply-adds per image of the model ``(name, arguments)`` as prepared (fusing removes
    some), on the meta device."""
    import torch

    from ..models import create_model, prepare_for_inference
    from ..models._profile import count_macs

    with torch.device("meta"):
        model = prepare_for_inference(create_model(arch[0], **arch[1]), fuse=fuse, channels_last=False)
    return count_macs(model, img_size) / 1e9


def _time_call(model, x, device) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of one call (CPU time shows how much of the wall
    time other processes took on a shared machine)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start, cpu = time.perf_counter(), time.process_time()
    model(x)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, time.process_time() - cpu


class _PeakMemory:
    """Peak memory of one call, above what the process held before it (see the module doc)."""

    def __init__(self, device):
        self.device = device
        self.peak_mb: float | None = None
        if device.type == "cuda":
            self.kind = "torch.cuda.max_memory_allocated above the allocation before the call"
        elif _can_reset_hwm():
            self.kind = "resident set growth during the call (VmHWM reset via /proc/self/clear_refs, minus VmRSS)"
        else:
            self.kind = None

    def __enter__(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._before = torch.cuda.memory_allocated(self.device)
        elif self.kind:
            _malloc_trim()  # return freed heap to the OS, so VmRSS before is what is live
            Path("/proc/self/clear_refs").write_text("5")
            self._before = _proc_status_kb("VmRSS")
        return self

    def __exit__(self, *exc):
        import torch

        if exc[0] is not None:
            return False
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = (torch.cuda.max_memory_allocated(self.device) - self._before) / 2**20
        elif self.kind:
            self.peak_mb = max(0, _proc_status_kb("VmHWM") - self._before) / 1024
        return False


def _can_reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _proc_status_kb("VmHWM") > 0
    except OSError:
        return False


def _proc_status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


def _malloc_trim() -> None:
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the baseline may include cached heap
        pass


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def print_table(report: dict) -> None:
    cfg = report["config"]
    load = cfg["loadavg_before"]
    print(f"batch {cfg['batch_size']}, {cfg['img_size']} px, {cfg['device']} ({plural(cfg['threads'], 'thread')}), "
          f"median of {cfg['repeats']} interleaved rounds after {cfg['warmup']} warm-up"
          + (f"; load average {load[0]:.2f} -> {cfg['loadavg_after'][0]:.2f}" if load else ""))
    header = ("model", "mode", "img/s", "vs resnet50", "GMACs/img", "GMAC/s", "peak MB")
    rows = []
    for r in report["results"]:
        ratio = f"{r['ratio_to_resnet50']:.3f}" if r["ratio_to_resnet50"] is not None else "-"
        peak = f"{r['peak_memory_mb']:.0f}" if r["peak_memory_mb"] is not None else "-"
        rows.append((r["model"], r["mode"] + ("" if r["exact"] else "*"), f"{r['images_per_s']:.2f}", ratio,
                     f"{r['gmacs_per_image']:.3g}", f"{r['gmacs_per_s']:.3g}", peak))
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    if any(not r["exact"] for r in report["results"]):
        print("* not exact (reduced precision)")


def _write_json(report: dict, out: Path) -> None:
    from .._io import write_text

    write_text(out, json.dumps(report, indent=2) + "\n")
