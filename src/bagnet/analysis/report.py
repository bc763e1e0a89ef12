"""One self-contained HTML report and a markdown summary from the experiments' JSON files.

The report reads only what the experiments wrote into the output folder (JSON + PNG),
so it can be rebuilt at any time (``bagnet analyze report --out DIR``) and never
recomputes anything. Figures are inlined as base64 PNGs: the HTML file is all one
needs to share.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._io import write_text
from .._text import plural
from ._output import read_json

__all__ = ["SECTIONS", "tables_for", "write_report"]

# (experiment, JSON file, PNG file, title, what it tests / what the paper found)
SECTIONS: tuple[tuple[str, str, str, str, str], ...] = (
    ("accuracy", "accuracy.json", "accuracy.png", "Accuracy",
     ("Top-1/top-5 on the data's classes and forward-pass throughput. Paper: on ImageNet BagNet-33 reaches "
      "87.6% top-5, and BagNet-17 about AlexNet's accuracy.")),
    ("patch-size", "patch_size.json", "patch_size.png", "Accuracy against patch size",
     "Paper: accuracy grows with the patch size q (BagNet-9 < 17 < 33)."),
    ("logit-correlation", "logit_correlation.json", "logit_correlation.png", "Logit correlation",
     ("Pearson r between BagNet and reference logits on the same images. Paper: BagNet logits correlate with "
      "VGG-16's, increasingly with q.")),
    ("error-distribution", "error_distribution.json", "error_distribution.png", "Error distribution",
     ("Per-class top-1 errors of BagNets against references. Paper: the class-wise errors of BagNet-33 and "
      "VGG-16 are strongly correlated.")),
    ("interactions", "interactions.json", "interactions.png", "Interactions of image parts",
     ("Change of the target logit when patches are masked one by one (summed) and all together. Slope 1 and "
      "r = 1 mean the parts act independently. Paper: for VGG-16 the joint effect of spatially separate masks is "
      "close to the sum of the single effects, as for a BagNet; deeper networks deviate more.")),
    ("spatial-sensitivity", "spatial_sensitivity.json", "spatial_sensitivity.png", "Spatial sensitivity",
     ("Drop of the tested network's true-class probability when the top-k 8x8 cells of a ranking are masked "
      "with the image's channel mean: BagNet heatmaps, attributions of the tested network itself (saliency, "
      "integrated gradients, DeepLIFT, epsilon-LRP, occlusion, Grad-CAM), for tested BagNets also the "
      "references' attributions ('METHOD LABEL'), and random cells. Paper: BagNet heatmaps predict the "
      "sensitive regions of other DNNs at least as well as attribution methods computed on those DNNs "
      "themselves.")),
    ("class-patches", "class_patches.json", None, "Class-typical patches",
     "The image patches with the most evidence for each class, over the data."),
    ("misclassified", "misclassified.json", None, "Misclassified images",
     "Heatmaps of the true and the predicted class for misclassified images."),
)


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "-" if not math.isfinite(v) else f"{v:.{digits}f}"
    return str(v)


def _at(values: Sequence[Any], i: int) -> Any:
    return values[i] if values is not None and 0 <= i < len(values) else None


def _ci(v: Any, ci: Sequence[Any] | None, digits: int = 2) -> str:
    """``"85.1 [83.9, 86.2]"``: a number and its interval (just the number without one)."""
    text = _fmt(v, digits)
    if text == "-" or not ci or len(ci) != 2 or any(c is None for c in ci):
        return text
    return f"{text} [{_fmt(float(ci[0]), digits)}, {_fmt(float(ci[1]), digits)}]"


def _p(p: Any) -> str:
    """A p-value: three decimals, or ``<0.001``."""
    if p is None or (isinstance(p, float) and not math.isfinite(p)):
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _boot_note(d: dict[str, Any]) -> str:
    b = d.get("bootstrap") or d.get("meta", {}).get("bootstrap") or {}
    if not b.get("resamples"):
        return ""
    level = round(100 * float(b.get("level", 0.95)))
    strata = " within classes" if b.get("strata") else ""
    return f"[{level}% CI]: percentile bootstrap over images{strata}, {b['resamples']} resamples (seed {b.get('seed', 0)})"


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def _comparison_rows(comparisons: Sequence[dict], digits: int, scale: float = 1.0) -> list[list[str]]:
    out = []
    for c in comparisons:
        diff = None if c.get("diff") is None else c["diff"] * scale
        ci = None if not c.get("diff_ci") else [None if v is None else v * scale for v in c["diff_ci"]]
        out.append([c["a"], c["b"], c.get("metric", ""), _ci(diff, ci, digits), _p(c.get("p"))])
    return out


def tables_for(name: str, d: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(caption, header, rows) tables summarizing one experiment's JSON content; every
    number with a bootstrap interval is shown as ``"value [low, high]"``."""
    note = _boot_note(d)
    if name == "accuracy":
        models = d["models"]
        rows = [[m["label"], m["model"], m["kind"], _fmt(m["receptive_field"]), _ci(m["top1"], m.get("top1_ci"), 1),
                 _ci(m["top5"], m.get("top5_ci"), 1), _fmt(m["images_per_s"], 1), _fmt(m["params"] / 1e6),
                 _fmt(m["gmacs"], 3), _fmt(m["images"])]
                for m in models]
        header = ["model", "architecture", "kind", "q", "top-1 % [95% CI]", "top-5 % [95% CI]", "images/s",
                  "params (M)", "GMACs", "images"]
        notes = sorted({m["scoring"] for m in models if m.get("scoring")})
        out = [(_join("; ".join(notes), note), header, rows)]
        comps = d.get("comparisons") or []
        if comps:
            rows = [[c["a"], c["b"], c["metric"], _ci(c["diff"], c.get("diff_ci"), 1), _p(c.get("p")),
                     _p(c.get("p_mcnemar")), _fmt(c.get("a_only")), _fmt(c.get("b_only"))] for c in comps]
            out.append(("paired comparisons on the same images: a minus b in percentage points, paired bootstrap "
                        "and McNemar's exact test",
                        ["a", "b", "metric", "a - b [95% CI]", "p (bootstrap)", "p (McNemar)", "only a right",
                         "only b right"], rows))
        return out
    if name == "patch-size":
        rows = [[_fmt(b["receptive_field"]), b["label"], _ci(b["top1"], b.get("top1_ci"), 1),
                 _ci(b["top5"], b.get("top5_ci"), 1)] for b in d["bagnets"]]
        rows += [["(reference)", r["label"], _ci(r["top1"], r.get("top1_ci"), 1), _ci(r["top5"], r.get("top5_ci"), 1)]
                 for r in d["references"]]
        return [(note, ["q", "model", "top-1 % [95% CI]", "top-5 % [95% CI]"], rows)]
    if name == "logit-correlation":
        def cells(p):
            return [_ci(p[k], p.get(f"{k}_ci"), 3) for k in ("r_all", "r_per_image", "r_per_image_median")]

        rows = [[p["bagnet"], _fmt(p["receptive_field"]), p["reference"], *cells(p)] for p in d["pairs"]]
        rows += [[b["a"], "(reference)", b["b"], *cells(b)] for b in d["baselines"]]
        out = [(_join(f"{plural(d['images'], 'image')}; r over all (image, class) entries, and per image over classes",
                      note),
                ["model", "q", "vs", "r (all entries)", "r per image (mean)", "r per image (median)"], rows)]
        comps = d.get("comparisons") or []
        if comps:
            rows = [[c["reference"], *r] for c, r in zip(comps, _comparison_rows(comps, 3))]
            out.append(("BagNets compared on the same images: larger q minus smaller q, paired bootstrap",
                        ["reference", "a", "b", "metric", "a - b [95% CI]", "p"], rows))
        return out
    if name == "error-distribution":
        rows = [[p["bagnet"], p["reference"], _ci(p["r"], p.get("r_ci"), 3)] for p in d["pairs"]]
        return [(_join(f"{plural(d['images'], 'image')}, {plural(len(d['classes']), 'class')}", note),
                 ["BagNet", "reference", "r of per-class errors [95% CI]"], rows)]
    if name == "interactions":
        rows = [[m["label"], m["kind"], _fmt(m["receptive_field"]), _ci(m["slope"], m.get("slope_ci"), 3),
                 _ci(m["intercept"], m.get("intercept_ci"), 3), _ci(m["r"], m.get("r_ci"), 3),
                 _ci(m["mean_abs_deviation"], m.get("mean_abs_deviation_ci"), 4),
                 _ci(m["relative_deviation"], m.get("relative_deviation_ci"), 3)]
                for m in d["models"]]
        cap = (f"{plural(d['images'], 'image')}, {plural(d['n_patches'], 'patch')} of {d['patch_size']}x{d['patch_size']} px "
               f"(gap {d['gap']} px), {d['target']} class; fit: joint = slope x sum + intercept")
        out = [(_join(cap, note), ["model", "kind", "q", "slope", "intercept", "r", "mean |joint - sum|", "relative"],
                rows)]
        comps = d.get("comparisons") or []
        if comps:
            out.append(("models compared on the same images and patches: a minus b, paired bootstrap",
                        ["a", "b", "metric", "a - b [95% CI]", "p"], _comparison_rows(comps, 3)))
        return out
    if name == "spatial-sensitivity":
        ks = d["ks"]
        show = sorted({i for i in (1, len(ks) // 2, len(ks) - 1) if 0 <= i < len(ks)})
        out = []
        for m in d["models"]:
            rows = []
            for rk, c in sorted(m["curves"].items(), key=lambda kv: -_mean_drop(kv[1])):
                rows.append([rk, *[_ci(_at(c["prob_drop"], i), _at(c.get("prob_drop_ci"), i), 3) for i in show],
                             _ci(_mean_drop(c), c.get("mean_drop_ci"), 3),
                             _ci(_at(c["logit_drop"], len(ks) - 1), _at(c.get("logit_drop_ci"), len(ks) - 1), 2)])
            cap = f"tested network {m['label']} ({plural(d['images'], 'image')}; best ranking first)"
            if m.get("unsupported"):
                cap += "; left out: " + "; ".join(f"{k} ({v})" for k, v in m["unsupported"].items())
            out.append((_join(cap, note), ["ranking", *[f"drop k={ks[i]}" for i in show], "mean drop (k > 0)",
                                           f"logit drop k={ks[-1]}"], rows))
            comps = m.get("comparisons") or []
            if comps:
                rows = [[c["a"], c["b"],
                         *[f"{_ci(_at(c['diff'], i), _at(c.get('diff_ci'), i), 3)} p={_p(_at(c.get('p'), i))}"
                           for i in show],
                         f"{_ci(c.get('mean_diff'), c.get('mean_diff_ci'), 3)} p={_p(c.get('mean_p'))}"]
                        for c in comps]
                out.append((f"tested network {m['label']}: heatmap minus other ranking, difference of drops on the "
                            "same images (positive: the heatmap's cells hurt more), paired bootstrap",
                            ["heatmap", "vs", *[f"k={ks[i]}" for i in show], "mean over k > 0"], rows))
        return out
    if name in ("class-patches", "misclassified"):
        rows = [[f.get("label", ""), f.get("caption", ""), f.get("png", "")] for f in d.get("figures", [])]
        return [("", ["model", "figure", "file"], rows)]
    return []


def _mean_drop(curve: dict[str, Any]) -> float:
    """The drop averaged over the masked k (older results: over all k)."""
    v = curve.get("mean_drop")
    return float(v) if v is not None else _mean(curve["prob_drop"])


def _mean(values: Sequence[Any]) -> float:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else float("nan")


def _figures(name: str, png: str | None, d: dict[str, Any]) -> list[tuple[str, str]]:
    """(relative PNG path, caption) of an experiment's figures."""
    if png is not None:
        return [(png, "")]
    return [(f["png"], f.get("caption", "")) for f in d.get("figures", []) if f.get("png")]


def _html_table(caption: str, header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _md_table(caption: str, header: list[str], rows: list[list[str]]) -> str:
    def esc(s: str) -> str:
        return str(s).replace("|", "\\|")

    lines = [f"*{caption}*", ""] if caption else []
    lines += ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}caption{text-align:left;color:#555;padding:.3em 0}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #eee;margin:.4em 0}
.note{color:#555}.meta{font-size:.85em;color:#555}code{background:#f4f4f4;padding:0 .2em}
"""


def write_report(out_dir: str | os.PathLike, *, title: str = "BagNet analyses") -> dict[str, Path]:
    """Write ``report.html`` (self-contained) and ``summary.md`` from the JSON files in ``out_dir``.

    Raises:
        ValueError: no experiment results in ``out_dir``.
    """
    out = Path(out_dir)
    found = [(s, read_json(out / s[1])) for s in SECTIONS if (out / s[1]).is_file()]
    if not found:
        raise ValueError(f"{out} holds no experiment results (*.json); run `bagnet analyze ...` first")
    meta = found[0][1].get("meta", {})
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    models = meta.get("models", [])
    model_line = ", ".join(f"{m['label']} ({m['model']})" for m in models)
    intro = (f"Data: {meta.get('data', '?')} at {meta.get('img_size', '?')} px, {plural(len(meta.get('classes', [])), 'class')}. "
             f"Models: {model_line}.")
    h = [(f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
          f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"),
         f"<p class='meta'>{html.escape(intro)}<br>Generated {stamp} by <code>bagnet analyze</code>.</p>"]
    md = [f"# {title}", "", intro, "", (f"Generated {stamp} by `bagnet analyze`; figures in this folder, "
                                        "full report with inlined figures in `report.html`."), ""]
    for (name, _, png, heading, note), d in found:
        m = d.get("meta", {})
        took = f" ({m['seconds']} s)" if m.get("seconds") is not None else ""
        h.append(f"<h2 id='{name}'>{html.escape(heading)}</h2><p class='note'>{html.escape(note)}</p>")
        md += [f"## {heading}", "", note, ""]
        for cap, header, rows in tables_for(name, d):
            h.append(_html_table(cap, header, rows))
            md += [_md_table(cap, header, rows), ""]
        for rel, cap in _figures(name, png, d):
            path = out / rel
            if not path.is_file():
                h.append(f"<p class='note'>(figure {html.escape(rel)} is missing)</p>")
                continue
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            h.append(f"<figure><img alt='{html.escape(rel)}' src='data:image/png;base64,{data}'>"
                     + (f"<figcaption>{html.escape(cap)}</figcaption>" if cap else "") + "</figure>")
            md += [f"![{cap or name}]({rel})", ""]
        text = ", ".join(f"{k}={v}" for k, v in (m.get("options") or {}).items() if v is not None)
        line = (f"options: {text}" if text else "default options") + took
        h.append(f"<p class='meta'>{html.escape(line)}</p>")
        md += [line[0].upper() + line[1:], ""]
    h.append("</body></html>")
    return {
        "html": write_text(out / "report.html", "\n".join(h) + "\n"),
        "md": write_text(out / "summary.md", "\n".join(md) + "\n"),
    }

