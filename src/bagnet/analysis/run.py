"""Running experiments: one session of models and data, the experiment registry, and
:func:`run_all`, which runs everything a config file asks for and writes the report.

A config file (JSON, or TOML on Python 3.11+) looks like::

    {
      "data": "../shared/data/imagenette", "split": "val",
      "img_size": 112, "max_images": 1000, "batch_size": 32, "device": "auto",
      "bootstrap_resamples": 2000, "bootstrap_seed": 0,
      "bagnets": ["BagNet-9=runs/b9/model.pt", "BagNet-33=runs/b33/model.pt"],
      "references": ["ResNet-18=resnet18@runs/r18/model.pt",
                     {"label": "VGG-11", "model": "vgg11_bn", "weights": "runs/vgg/model.pt"}],
      "experiments": {"interactions": {"max_images": 200, "n_patches": 10},
                      "spatial-sensitivity": {"max_images": 100, "max_k": 30},
                      "misclassified": false}
    }

Relative paths are relative to the config file's folder. Experiments not named under
``experiments`` run with their defaults; ``false`` skips one. Every step writes its JSON
atomically and is skipped on the next run when its JSON holds the same step key (same
models and weight files, data and options), unless ``force``. Every number gets a 95%
percentile-bootstrap interval over images (``bootstrap_resamples`` seeded resamples,
``bootstrap_seed``); a finished step whose only change is the bootstrap gets new intervals
from its saved per-image results (interactions, spatial sensitivity) or from the cached
model outputs, without masking images again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._device import resolve_dtype
from ._output import read_json
from ._session import Session
from ._specs import ModelSpec, parse_model_spec
from ._stats import Bootstrap

logger = logging.getLogger(__name__)

__all__ = ["EXPERIMENTS", "AnalysisConfig", "Session", "load_config", "run_all", "run_experiment"]


# -- configuration -----------------------------------------------------------------------


@dataclass
class AnalysisConfig:
    """Everything ``bagnet analyze all`` needs; see the module docstring for the file format."""

    data: str
    bagnets: list[ModelSpec]
    references: list[ModelSpec] = field(default_factory=list)
    out: str = "analysis"
    split: str = "val"
    img_size: int | None = None
    max_images: int | None = None
    batch_size: int = 32
    workers: int = 2
    device: str = "auto"
    threads: int | None = None
    seed: int = 0
    class_map: str | None = None
    restrict_to_folder_classes: bool = False
    bootstrap_resamples: int = 2000
    bootstrap_seed: int = 0
    title: str = "BagNet analyses"
    experiments: dict[str, dict[str, Any] | bool] = field(default_factory=dict)

    def enabled(self) -> list[tuple[str, dict[str, Any]]]:
        """(experiment, options) in registry order, skipping the ones set to ``false``."""
        out = []
        for name in EXPERIMENTS:
            opts = self.experiments.get(name, {})
            if opts is False:
                continue
            out.append((name, {} if opts is True else dict(opts)))
        return out

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["bagnets"] = [s.to_dict() for s in self.bagnets]
        d["references"] = [s.to_dict() for s in self.references]
        return d


_CONFIG_KEYS = {f.name for f in dataclasses.fields(AnalysisConfig)}


def _canonical(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def load_config(path: str | os.PathLike) -> AnalysisConfig:
    """Read and check a JSON or TOML config file; relative paths become relative to its folder."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10
            raise ValueError(f"{path}: TOML config files need Python 3.11 or later; use JSON") from None
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path} is not valid TOML ({e})") from None
    else:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: the config must be an object/table at the top level")
    return config_from_dict(raw, base=path.parent)


def config_from_dict(raw: dict[str, Any], base: str | os.PathLike = ".") -> AnalysisConfig:
    unknown = sorted(set(raw) - _CONFIG_KEYS)
    if unknown:
        raise ValueError(f"config: unknown keys {unknown}; known: {sorted(_CONFIG_KEYS)}")
    if not raw.get("data"):
        raise ValueError("config: 'data' (the image folder) is required")
    if not raw.get("bagnets"):
        raise ValueError("config: 'bagnets' must list at least one BagNet")
    base = Path(base)

    def rel(p: str | None) -> str | None:
        if p is None or "://" in str(p):
            return p
        q = Path(str(p)).expanduser()
        return str(q if q.is_absolute() else base / q)

    def specs(key: str) -> list[ModelSpec]:
        items = raw.get(key) or []
        if not isinstance(items, list):
            raise ValueError(f"config: '{key}' must be a list")
        out = []
        for item in items:
            s = parse_model_spec(item if isinstance(item, dict) else _rel_spec(str(item), base))
            if isinstance(item, dict) and s.weights and _looks_like_path(s.weights):
                s = dataclasses.replace(s, weights=rel(s.weights))
            out.append(s)
        return out

    experiments: dict[str, Any] = {}
    for name, opts in (raw.get("experiments") or {}).items():
        key = _canonical(name)
        if key not in EXPERIMENTS:
            raise ValueError(f"config: unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)}")
        if not isinstance(opts, (bool, dict)):
            raise ValueError(f"config: experiment {name!r} must map to options (an object) or true/false")
        if isinstance(opts, dict):
            opts = {k.replace("-", "_"): v for k, v in opts.items()}
            EXPERIMENTS[key].check_options(opts)
        experiments[key] = opts
    values = {k: v for k, v in raw.items() if k not in ("bagnets", "references", "experiments")}
    cfg = AnalysisConfig(**{**values, "bagnets": specs("bagnets"), "references": specs("references"),
                            "experiments": experiments})
    Bootstrap(cfg.bootstrap_resamples, cfg.bootstrap_seed)  # refuse bad settings before any model loads
    cfg.data = rel(cfg.data)
    cfg.out = rel(cfg.out)
    cfg.class_map = cfg.class_map if cfg.class_map in (None, "imagenet") else rel(cfg.class_map)
    return cfg


def _looks_like_path(weights: str) -> bool:
    return "/" in weights or "\\" in weights or Path(weights).suffix in (".pt", ".pth", ".tar", ".bin")


def _rel_spec(text: str, base: Path) -> str:
    """Make the path part of a ``[LABEL=]NAME@PATH`` / ``[LABEL=]PATH`` string relative to ``base``."""
    label, rest = (text.split("=", 1) if "=" in text else (None, text))
    prefix = f"{label}=" if label is not None else ""
    if "@" in rest:
        name, weights = rest.split("@", 1)
        if _looks_like_path(weights) and not Path(weights).is_absolute() and "://" not in weights:
            weights = str(base / weights)
        return f"{prefix}{name}@{weights}"
    if _looks_like_path(rest) and not Path(rest).is_absolute():
        return f"{prefix}{base / rest}"
    return text


# -- the experiment registry ---------------------------------------------------------------


@dataclass(frozen=True)
class Experiment:
    """How to run one experiment in a session and save its result."""

    name: str
    run: Callable[..., Any]  # (session, **options) -> result
    write: Callable[..., dict[str, Path]]  # (result, out_dir, meta) -> paths
    options: dict[str, Any]  # option -> default
    json_name: str
    help: str
    # (saved JSON content, out dir, bootstrap) -> result with new intervals, or None when
    # the saved per-image results do not allow it; None: the step is run again instead.
    refresh: Callable[..., Any] | None = None
    # option -> (the value of another option under which it acts, as a predicate; what that
    # is, for the message): given while it does not act, an option would be silently ignored.
    requires: dict[str, tuple[Callable[[dict[str, Any]], bool], str]] = field(default_factory=dict)

    def check_options(self, options: dict[str, Any]) -> None:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise ValueError(f"{self.name}: unknown option(s) {unknown}; known: {sorted(self.options)}")
        for option, (acts, condition) in self.requires.items():
            if options.get(option) is not None and not acts(options):
                raise ValueError(f"{self.name}: {option} would be ignored: it only acts {condition}")


def _method_names(methods: str | Sequence[str] | None) -> list[str] | None:
    """spatial-sensitivity's ``methods`` option as a list (a config may write "a,b"); None: all."""
    if isinstance(methods, str):
        return [m.strip() for m in methods.split(",") if m.strip()]
    return None if methods is None else list(methods)


def _method_given(method: str) -> tuple[Callable[[dict[str, Any]], bool], str]:
    """Spatial sensitivity: an option of ``method`` acts when ``methods`` is left at its
    default (every method) or names it."""

    def acts(options: dict[str, Any]) -> bool:
        methods = _method_names(options.get("methods"))
        return methods is None or method in methods

    return acts, f"when methods include {method} (add {method} to methods, or drop the option)"


def _accuracy(s: Session, max_images=None):
    from .accuracy import AccuracyResult, accuracy, accuracy_comparisons

    common = {"max_images": max_images or s.max_images, "batch_size": s.batch_size, "cache": s.cache,
              "restricted": s.restrict_to_folder_classes, "bootstrap": s.bootstrap}
    return AccuracyResult(accuracy(s.models, s.data, **common), accuracy_comparisons(s.models, s.data, **common),
                          s.bootstrap.describe())


def _patch_size(s: Session, max_images=None):
    from .patch_size import patch_size

    return patch_size(s.models, s.data, max_images=max_images or s.max_images, batch_size=s.batch_size, cache=s.cache,
                      restricted=s.restrict_to_folder_classes, bootstrap=s.bootstrap)


def _logit_correlation(s: Session, max_images=None):
    from .logit_correlation import logit_correlation

    return logit_correlation(s.bagnets, s.references, s.data, max_images=max_images or s.max_images,
                             batch_size=s.batch_size, cache=s.cache, bootstrap=s.bootstrap)


def _error_distribution(s: Session, max_images=None):
    from .error_distribution import error_distribution

    return error_distribution(s.bagnets, s.references, s.data, max_images=max_images or s.max_images,
                              batch_size=s.batch_size, cache=s.cache, restricted=s.restrict_to_folder_classes,
                              bootstrap=s.bootstrap)


def _interactions(s: Session, max_images=None, n_patches=10, patch_size=8, gap=0, target="true"):
    from .interactions import interactions

    return interactions(s.models, s.data, n_patches=int(n_patches), patch_size=patch_size, gap=int(gap), target=target,
                        max_images=max_images or s.max_images, batch_size=s.batch_size, seed=s.seed, cache=s.cache,
                        bootstrap=s.bootstrap)


def _refresh_interactions(saved: dict[str, Any], out_dir: Path, boot: Bootstrap):
    from .interactions import InteractionResult, add_fits

    keep = ("label", "model", "kind", "receptive_field", "outputs", "source", "indices", "sum_single", "joint")
    try:
        result = InteractionResult(saved["patch_size"], saved["n_patches"], saved["gap"], saved["target"],
                                   models=[{k: m[k] for k in keep if k in m} for m in saved["models"]],
                                   images=saved["images"])
        if any(len(m["sum_single"]) != result.images for m in result.models):
            return None
    except (KeyError, TypeError):
        return None
    return add_fits(result, boot)


def _heatmap_dtype(s: Session, name: str):
    """The dtype of the ``heatmap_dtype`` option; an ``auto`` choice of bfloat16 is logged."""
    dtype, line = resolve_dtype(name, s.device)
    if line:
        logger.warning("%s", line)
    return dtype


def _spatial(s: Session, max_images=None, methods=None, max_k=30, k_step=2, cell=8, heatmap_stride=1,
             ig_steps=25, lrp_epsilon=1e-2, test_bagnets=True, heatmap_dtype="float32", occlusion_window=None,
             occlusion_stride=None, gradcam_layer=None):
    from ._captum import METHODS
    from .spatial_sensitivity import spatial_sensitivity

    tested = [*s.references, *(s.bagnets if test_bagnets else [])]
    if not tested:
        raise ValueError("spatial-sensitivity tests reference networks: add at least one (or set test_bagnets)")
    methods = _method_names(methods)
    ks = sorted({0, *range(int(k_step), int(max_k) + 1, int(k_step)), int(max_k)}) if int(k_step) > 0 else [0, int(max_k)]
    return spatial_sensitivity(
        s.bagnets, tested, s.data, methods=METHODS if methods is None else methods, ks=ks, cell=int(cell),
        heatmap_stride=heatmap_stride, heatmap_dtype=_heatmap_dtype(s, heatmap_dtype),
        max_images=max_images or s.max_images, batch_size=s.batch_size,
        ig_steps=int(ig_steps), lrp_epsilon=float(lrp_epsilon), seed=s.seed, cache=s.cache,
        references=s.references if test_bagnets else (),
        occlusion_window=None if occlusion_window is None else int(occlusion_window),
        occlusion_stride=None if occlusion_stride is None else int(occlusion_stride),
        gradcam_layer=gradcam_layer, bootstrap=s.bootstrap,
    )


def _refresh_spatial(saved: dict[str, Any], out_dir: Path, boot: Bootstrap):
    from .spatial_sensitivity import add_curves, read_per_image

    result = read_per_image(saved, out_dir)
    return None if result is None else add_curves(result, boot)


def _class_patches(s: Session, classes=None, top=8, heatmap_stride="native", heatmap_dtype="float32"):
    from .figures import class_patches

    if isinstance(classes, str):
        classes = [c.strip() for c in classes.split(",") if c.strip()]
    return class_patches(s.bagnets, s.data, out_dir=s.out_dir, classes=classes, top=int(top),
                         stride=heatmap_stride, batch_size=s.batch_size, dtype=_heatmap_dtype(s, heatmap_dtype))


def _misclassified(s: Session, max_images=None, count=8, heatmap_stride=1, heatmap_dtype="float32"):
    from .figures import misclassified

    return misclassified(s.bagnets, s.data, out_dir=s.out_dir, count=int(count), stride=heatmap_stride,
                         max_images=max_images or s.max_images, batch_size=s.batch_size, cache=s.cache,
                         dtype=_heatmap_dtype(s, heatmap_dtype))


def _writer(module: str, fn: str) -> Callable[..., dict[str, Path]]:
    def write(result, out_dir, meta=None):
        import importlib

        return getattr(importlib.import_module(f"bagnet.analysis.{module}"), fn)(result, out_dir, meta)

    return write


EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in (
        Experiment("accuracy", _accuracy, _writer("accuracy", "write_accuracy"), {"max_images": None},
                   "accuracy.json", "top-1/top-5 and images/s of every model"),
        Experiment("patch-size", _patch_size, _writer("patch_size", "write_patch_size"), {"max_images": None},
                   "patch_size.json", "BagNet accuracy against the patch size q"),
        Experiment("logit-correlation", _logit_correlation,
                   _writer("logit_correlation", "write_logit_correlation"), {"max_images": None},
                   "logit_correlation.json", "Pearson r of BagNet and reference logits against q"),
        Experiment("error-distribution", _error_distribution,
                   _writer("error_distribution", "write_error_distribution"), {"max_images": None},
                   "error_distribution.json", "per-class errors of BagNets against references"),
        Experiment("interactions", _interactions, _writer("interactions", "write_interactions"),
                   {"max_images": None, "n_patches": 10, "patch_size": 8, "gap": 0, "target": "true"},
                   "interactions.json", "do masked image parts change the logit independently?",
                   refresh=_refresh_interactions),
        Experiment("spatial-sensitivity", _spatial, _writer("spatial_sensitivity", "write_spatial_sensitivity"),
                   {"max_images": None, "methods": None, "max_k": 30, "k_step": 2, "cell": 8, "heatmap_stride": 1,
                    "ig_steps": 25, "lrp_epsilon": 1e-2, "test_bagnets": True, "heatmap_dtype": "float32",
                    "occlusion_window": None, "occlusion_stride": None, "gradcam_layer": None},
                   "spatial_sensitivity.json", "masking cells ranked by heatmaps vs attributions vs random",
                   refresh=_refresh_spatial,
                   requires={"ig_steps": _method_given("integrated_gradients"), "lrp_epsilon": _method_given("lrp"),
                             "occlusion_window": _method_given("occlusion"),
                             "occlusion_stride": _method_given("occlusion"),
                             "gradcam_layer": _method_given("gradcam")}),
        Experiment("class-patches", _class_patches, _writer("figures", "write_class_patches"),
                   {"classes": None, "top": 8, "heatmap_stride": "native", "heatmap_dtype": "float32"},
                   "class_patches.json", "most class-typical patches of each BagNet over the data"),
        Experiment("misclassified", _misclassified, _writer("figures", "write_misclassified"),
                   {"max_images": None, "count": 8, "heatmap_stride": 1, "heatmap_dtype": "float32"},
                   "misclassified.json", "heatmaps of misclassified images"),
    )
}


def run_experiment(
    session: Session, name: str, options: dict[str, Any] | None = None, *, force: bool = True
) -> tuple[dict[str, Any], bool]:
    """Run one experiment and write its JSON/PNG into the session's out dir.

    Returns:
        (the JSON content, whether it was computed now rather than found up to date).
    """
    key = _canonical(name)
    if key not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)}")
    exp = EXPERIMENTS[key]
    options = {k.replace("-", "_"): v for k, v in (options or {}).items()}
    exp.check_options(options)
    step = session.step_key(key, options)
    path = session.out_dir / exp.json_name
    start = time.perf_counter()
    result = None
    if not force and path.is_file():
        try:
            old = read_json(path)
        except ValueError:
            old = {}
        old_meta = old.get("meta", {})
        if old_meta.get("step_key") == step:
            if old_meta.get("bootstrap") == session.bootstrap.describe():
                logger.info("%s: up to date (%s)", key, path)
                return old, False
            if exp.refresh is not None:
                result = exp.refresh(old, session.out_dir, session.bootstrap)
                if result is not None:
                    logger.info("%s: new bootstrap settings; intervals recomputed from the saved per-image results",
                                key)
                    start -= float(old_meta.get("seconds") or 0.0)
        else:
            logger.info("%s: models, data or options changed since %s; recomputing", key, path)
    if result is None:
        result = exp.run(session, **options)
    meta = {**session.describe(), "options": {**exp.options, **options}, "step_key": step,
            "seconds": round(time.perf_counter() - start, 1), "command": shlex.join(["bagnet", *sys.argv[1:]])}
    exp.write(result, session.out_dir, meta)
    logger.info("%s: done in %.1fs -> %s", key, meta["seconds"], path)
    return read_json(path), True


def run_all(config: AnalysisConfig, *, force: bool = False, only: Sequence[str] | None = None) -> dict[str, Path]:
    """Run every enabled experiment of ``config`` (resuming), then write the report.

    Returns:
        paths of ``report.html`` and ``summary.md`` (keys ``html``, ``md``).
    """
    from .report import write_report

    session = Session(
        config.data, config.bagnets, config.references, out_dir=config.out, split=config.split,
        img_size=config.img_size, max_images=config.max_images, batch_size=config.batch_size,
        workers=config.workers, device=config.device, threads=config.threads, seed=config.seed,
        class_map=config.class_map, restrict_to_folder_classes=config.restrict_to_folder_classes,
        bootstrap_resamples=config.bootstrap_resamples, bootstrap_seed=config.bootstrap_seed,
    )
    from ._output import write_json

    write_json(config.to_dict(), session.out_dir / "config.json")
    steps = config.enabled()
    if only:
        wanted = {_canonical(n) for n in only}
        bad = wanted - set(EXPERIMENTS)
        if bad:
            raise ValueError(f"unknown experiment(s) {sorted(bad)}; known: {', '.join(EXPERIMENTS)}")
        steps = [(n, o) for n, o in steps if n in wanted]
    from ._output import progress

    for name, opts in progress(steps, "analyze all", total=len(steps)):
        run_experiment(session, name, opts, force=force)
    return write_report(session.out_dir, title=config.title)
