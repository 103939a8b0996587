"""HTML report of an evaluation: numbers, configuration, plots, and per query the top results.

One folder: `index.html`, `plots/*.png` (matplotlib, Agg, no pyplot state),
`thumbs/*.jpg` (one per distinct image and crop) and `results.json`. Results
are framed green when right, red when wrong, grey when the protocol ignores
them (junk). The folder is self-contained: copy it anywhere and it still opens.
"""

from __future__ import annotations

import hashlib
import html
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from loupe.eval.common import EvalResult, QueryRecord, ResultItem

THUMB = 160
COLORS = {True: "#1a7f37", False: "#cf222e", None: "#8c959f"}
MARKS = {True: "&#10003; right", False: "&#10007; wrong", None: "&ndash; ignored"}

CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#1f2328;max-width:1400px}
table{border-collapse:collapse}td,th{padding:.25em .8em;border-bottom:1px solid #d0d7de;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.query{border-top:2px solid #d0d7de;margin-top:1.5em;padding-top:.8em}
.row{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start}
figure{margin:0;width:170px;font-size:12px;overflow-wrap:anywhere}
figure img{border:5px solid #8c959f;display:block}
.qimg img{border-color:#0969da}
.text{width:160px;min-height:60px;border:5px solid #8c959f;padding:4px;box-sizing:border-box}
pre{background:#f6f8fa;padding:1em;overflow:auto;font-size:12px}
.plots img{max-width:640px;margin-right:1em}
"""


def write_report(result: EvalResult, out_dir: Path | str, max_queries: int = 100) -> Path:
    """Write the report folder and return the path of its index.html."""
    out = Path(out_dir).expanduser()
    (out / "thumbs").mkdir(parents=True, exist_ok=True)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    result.write_json(out / "results.json")
    thumbs = _Thumbs(out / "thumbs")
    plots = _plots(result, out / "plots")

    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Loupe eval: {_e(result.protocol)}</title>"
             f"<style>{CSS}</style></head><body>",
             f"<h1>{_e(result.protocol)}</h1>", _summary(result)]
    if result.notes:
        parts.append("<ul>" + "".join(f"<li>{_e(n)}</li>" for n in result.notes) + "</ul>")
    if plots:
        parts.append("<h2>Plots</h2><div class='plots'>" +
                     "".join(f"<img src='plots/{p.name}' alt='{_e(p.stem)}'>" for p in plots) + "</div>")
    shown = result.queries[:max_queries]
    parts.append(f"<h2>Queries</h2><p>{len(shown)} of {len(result.queries)} queries shown with their top "
                 f"results; every per-query number is in <a href='results.json'>results.json</a>.</p>")
    parts.extend(_query_html(q, thumbs) for q in shown)
    parts.append("<h2>Configuration</h2><pre>" + _e(json.dumps(result.config, indent=2, default=str)) + "</pre>")
    parts.append("</body></html>")
    index = out / "index.html"
    index.write_text("\n".join(parts), encoding="utf-8")
    return index


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _fmt(v: float | None) -> str:
    return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.2f}"


def _summary(result: EvalResult) -> str:
    model = result.config.get("model", {})
    rows = "".join(f"<tr><th>{_e(k)}</th><td class='num'>{_fmt(v)}</td></tr>" for k, v in result.metrics.items())
    dataset = result.config.get("dataset", {})
    rerank = ", ".join(r["name"] for r in result.config.get("rerank", [])) or "none"
    return (f"<p>model <b>{_e(model.get('model'))}</b> &middot; dataset <b>{_e(dataset.get('name'))}</b> "
            f"&middot; rerank <b>{_e(rerank)}</b> &middot; {_e(result.config.get('created', ''))}</p>"
            f"<table><tr><th>metric</th><th>%</th></tr>{rows}</table>")


class _Thumbs:
    """Thumbnails written once per (image, box); unreadable images become a labelled placeholder."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.done: dict[str, str] = {}

    def get(self, path: Path, box: tuple | None = None) -> str:
        key = hashlib.sha1(f"{Path(path).resolve()}|{box}".encode()).hexdigest()[:20]
        if key in self.done:
            return self.done[key]
        name = f"{key}.jpg"
        try:
            with Image.open(path) as im:
                # boxes are in stored-pixel coordinates: only rotate by EXIF when there is none
                im = im.convert("RGB") if box is not None else ImageOps.exif_transpose(im).convert("RGB")
            if box is not None:
                draw = ImageDraw.Draw(im)
                width = max(2, round(max(im.size) / 150))
                draw.rectangle([float(v) for v in box], outline=(9, 105, 218), width=width)
            im.thumbnail((THUMB, THUMB))
        except (OSError, ValueError):
            im = Image.new("RGB", (THUMB, THUMB // 2), (230, 230, 230))
            ImageDraw.Draw(im).text((8, 8), "unreadable", fill=(120, 0, 0))
        im.save(self.folder / name, quality=85)
        self.done[key] = f"thumbs/{name}"
        return self.done[key]


def _item_html(item: ResultItem, rank: int, thumbs: _Thumbs) -> str:
    color = COLORS[item.correct]
    score = f" &middot; {item.score:.3f}" if item.score is not None else ""
    caption = f"<figcaption>#{rank} {MARKS[item.correct]}{score}<br>{_e(item.label)}</figcaption>"
    if item.path is None:
        return f"<figure><div class='text' style='border-color:{color}'>{_e(item.label)}</div>{caption}</figure>"
    src = thumbs.get(item.path, item.box)
    return (f"<figure><img src='{src}' alt='{_e(item.label)}' style='border-color:{color}' loading='lazy'>"
            f"{caption}</figure>")


def _query_html(q: QueryRecord, thumbs: _Thumbs) -> str:
    metrics = " &middot; ".join(f"{_e(k)} {_fmt(v)}" for k, v in q.metrics.items())
    nrel = f" &middot; {q.n_relevant} relevant" if q.n_relevant is not None else ""
    head = f"<div class='query'><h3>{_e(q.name)}</h3><p>{metrics}{nrel}</p><div class='row'>"
    if q.path is not None:
        head += (f"<figure class='qimg'><img src='{thumbs.get(q.path, q.box)}' alt='query {_e(q.name)}'>"
                 f"<figcaption>query</figcaption></figure>")
    elif q.text is not None:
        head += f"<figure><div class='text' style='border-color:#0969da'>{_e(q.text)}</div>" \
                "<figcaption>query</figcaption></figure>"
    return head + "".join(_item_html(it, r, thumbs) for r, it in enumerate(q.top, 1)) + "</div></div>"


def _plots(result: EvalResult, folder: Path) -> list[Path]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = []
    for n, c in enumerate(result.curves):
        fig = Figure(figsize=(6, 4), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.plot(c.x, c.y)
        ax.set_xlabel(c.xlabel)
        ax.set_ylabel(c.ylabel)
        ax.set_title(c.name)
        if c.ylabel == "precision":
            ax.set_ylim(0, 1.05)
            ax.set_xlim(0, 1.0)
        elif "%" in c.ylabel:
            ax.set_ylim(0, 105)
        ax.grid(True, alpha=0.3)
        path = folder / f"curve_{n}.png"
        fig.savefig(path)
        out.append(path)
    metric = result.per_query_metric
    values = np.array([q.metrics.get(metric, np.nan) for q in result.queries], dtype=float) if metric else []
    if metric and len(values) and np.isfinite(values).any():
        values = values[np.isfinite(values)]
        fig = Figure(figsize=(6, 4), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        if "rank" in metric:
            ax.hist(values, bins=np.unique(np.geomspace(1, max(values.max(), 2), 30).round()))
            ax.set_xscale("log")
            ax.set_xlabel(f"{metric} (1 = first)")
            ax.set_ylabel("queries")
        else:
            ordered = np.sort(values)[::-1]
            ax.bar(np.arange(len(ordered)), ordered, width=1.0)
            ax.axhline(ordered.mean(), color="#cf222e", linestyle="--", label=f"mean {ordered.mean():.2f}")
            ax.legend()
            ax.set_xlabel("queries, best first")
            ax.set_ylabel(f"{metric} (%)")
        ax.set_title(f"per-query {metric}")
        path = folder / "per_query.png"
        fig.savefig(path)
        out.append(path)
    return out
