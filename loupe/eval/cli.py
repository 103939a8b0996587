"""`loupe eval`: score a configuration on a standard benchmark or on your own labelled queries."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from loupe.core.config import DEFAULT_MODEL
from loupe.eval.common import DatasetError, EvalOptions, EvalResult

err = Console(stderr=True)

eval_app = typer.Typer(
    help="Score a model (and rerankers) on standard retrieval benchmarks, or on your own labelled "
    "queries against a library. Prints a table, writes a JSON file with every number and the full "
    "configuration, and with --report DIR an HTML report with plots and per-query results.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)


def register(app: typer.Typer) -> None:
    app.add_typer(eval_app, name="eval")


@eval_app.callback()
def _runtime(ctx: typer.Context,
             backend: Annotated[str | None, typer.Option(
                 "--backend", help="auto, torch, onnx or openvino, for every command "
                 "(`loupe eval --backend onnx coco ...`). Default: $LOUPE_BACKEND or auto.",
                 show_default=False, metavar="NAME")] = None,
             precision: Annotated[str | None, typer.Option(
                 "--precision", help="auto, fp32, fp16 (GPU), int8 or bf16 (CPU, opt-in). "
                 "Default: $LOUPE_PRECISION or auto.", show_default=False, metavar="NAME")] = None,
             ) -> None:
    """Score a model on a benchmark or on your own labelled queries."""
    from loupe.core.config import default
    from loupe.core.errors import ModelError
    from loupe.models.options import check_runtime

    try:  # before any dataset is read or model loads
        chosen = check_runtime(backend or default("backend"), precision or default("precision"))
    except ModelError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    ctx.obj = {"backend": chosen[0], "precision": chosen[1]}


# Options shared by the commands.
DataOpt = Annotated[Path, typer.Option("--data", "-d", help="Dataset folder, in the official layout "
                                       "(see the README's evaluation section).", show_default=False, metavar="PATH")]
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="open_clip ARCH:TAG, e.g. "
                                       "ViT-B-32:laion2b_s34b_b79k, or ARCH with --weights.", metavar="TEXT")]
WeightsOpt = Annotated[Path | None, typer.Option("--weights", help="Local checkpoint for --model's "
                                                 "architecture.", show_default=False, metavar="PATH")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or mps.", metavar="TEXT")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Images per model batch.", metavar="N")]
RerankOpt = Annotated[str | None, typer.Option("--rerank", help="Reranker chain, e.g. "
                                               "'superglobal' or 'qe:alpha=3,spatial' (see `loupe rerankers`).",
                                               show_default=False, metavar="TEXT")]
DepthOpt = Annotated[int | None, typer.Option("--rerank-depth", min=1, help="Head length M handed to "
                                              "each reranker. Default: each reranker's own.",
                                              show_default=False, metavar="N")]
ReportOpt = Annotated[Path | None, typer.Option("--report", help="Write an HTML report (plots, per-query "
                                                "thumbnails) into this folder.", show_default=False, metavar="PATH")]
OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="JSON results file. Default: "
                                             "DIR/results.json with --report, else no file (--json prints it).", show_default=False, metavar="PATH")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the JSON results to stdout instead of a table.")]
CacheOpt = Annotated[Path | None, typer.Option("--cache-dir", help="Embedding cache. Default: "
                                               "$LOUPE_EVAL_CACHE or ~/.cache/loupe/eval.", show_default=False, metavar="PATH")]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="Neither read nor write cached embeddings.")]
FeaturesOpt = Annotated[Path | None, typer.Option(
    "--features", help="Score precomputed vectors instead of a model: the official example .mat (Q: d x "
    "queries, X: d x images) or a .npz with Q and X as rows. Images are then only read for --rerank and "
    "the report.", show_default=False, metavar="PATH")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
ReportQueriesOpt = Annotated[int, typer.Option("--report-queries", min=0,
                                               help="Queries shown with thumbnails in the report.", metavar="N")]


def _options(model: str, weights: Path | None, device: str, batch_size: int, rerank: str | None,
             rerank_depth: int | None, cache_dir: Path | None, no_cache: bool, quiet: bool,
             report_queries: int = 100) -> EvalOptions:
    import click

    ctx = click.get_current_context(silent=True)
    runtime = (ctx.find_object(dict) if ctx else None) or {}
    return EvalOptions(model=model, weights=str(weights) if weights else None, device=device,
                       **runtime, batch_size=batch_size, cache_dir=cache_dir, use_cache=not no_cache, rerank=rerank,
                       rerank_depth=rerank_depth, progress=not quiet, report_queries=report_queries)


def _run(name: str, compute: Callable[[], EvalResult], report: Path | None, out: Path | None,
         as_json: bool, report_queries: int = 100) -> None:
    """Run one evaluation and deliver its three outputs; user errors become one red line."""
    from loupe.core.errors import ModelError

    started = time.time()
    try:
        result = compute()
    except (DatasetError, ModelError, ValueError, FileNotFoundError) as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    result.config["runtime_s"] = round(time.time() - started, 3)
    if out is None and report is not None:
        out = report / "results.json"
    if report is not None:
        from loupe.eval.report import write_report

        index = write_report(result, report, max_queries=report_queries)
        err.print(f"report: {index}")
    if out is not None:
        result.write_json(out)
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2, default=str) + "\n")
        return
    _table(result)
    if out is not None:
        err.print(f"results: {out}")


def _table(result: EvalResult) -> None:
    model = result.config.get("model", {}).get("model")
    rerank = ", ".join(r["name"] for r in result.config.get("rerank", [])) or "none"
    console = Console()
    console.print(f"[bold]{result.protocol}[/] · model {model} · rerank: {rerank}", highlight=False)
    table = Table()
    table.add_column("metric")
    table.add_column("%", justify="right")
    for k, v in result.metrics.items():
        table.add_row(k, "n/a" if v != v else f"{v:.2f}")
    console.print(table)
    for note in result.notes:
        err.print(f"note: {note}")


@eval_app.command("roxford5k")
def roxford5k(data: DataOpt, distractors: Annotated[Path | None, typer.Option(
        "--distractors", help="revisitop1m folder (revisitop1m.txt + jpg/): evaluate +R1M.",
        show_default=False, metavar="PATH")] = None, features: FeaturesOpt = None,
        model: ModelOpt = DEFAULT_MODEL, weights: WeightsOpt = None, device: DeviceOpt = "auto",
        batch_size: BatchOpt = 64, rerank: RerankOpt = None, rerank_depth: DepthOpt = None,
        report: ReportOpt = None, out: OutOpt = None, as_json: JsonOpt = False, cache_dir: CacheOpt = None,
        no_cache: NoCacheOpt = False, quiet: QuietOpt = False, report_queries: ReportQueriesOpt = 100) -> None:
    """Revisited Oxford5k: mAP Easy/Medium/Hard and mP@1/5/10 (queries cropped to their box)."""
    _revisitop("roxford5k", **locals())


@eval_app.command("rparis6k")
def rparis6k(data: DataOpt, distractors: Annotated[Path | None, typer.Option(
        "--distractors", help="revisitop1m folder (revisitop1m.txt + jpg/): evaluate +R1M.",
        show_default=False, metavar="PATH")] = None, features: FeaturesOpt = None,
        model: ModelOpt = DEFAULT_MODEL, weights: WeightsOpt = None, device: DeviceOpt = "auto",
        batch_size: BatchOpt = 64, rerank: RerankOpt = None, rerank_depth: DepthOpt = None,
        report: ReportOpt = None, out: OutOpt = None, as_json: JsonOpt = False, cache_dir: CacheOpt = None,
        no_cache: NoCacheOpt = False, quiet: QuietOpt = False, report_queries: ReportQueriesOpt = 100) -> None:
    """Revisited Paris6k: mAP Easy/Medium/Hard and mP@1/5/10 (queries cropped to their box)."""
    _revisitop("rparis6k", **locals())


def _revisitop(name: str, data: Path, distractors: Path | None, features: Path | None, report: Path | None,
               out: Path | None, as_json: bool, report_queries: int, **opts: Any) -> None:
    from loupe.eval import revisitop

    options = _options(report_queries=report_queries, **opts)

    def compute() -> EvalResult:
        ds = revisitop.load(name, data, distractors, check_images=features is None)
        return revisitop.evaluate(ds, options, features=features)

    _run(name, compute, report, out, as_json, report_queries)


@eval_app.command("gldv2")
def gldv2(data: DataOpt, model: ModelOpt = DEFAULT_MODEL, weights: WeightsOpt = None, device: DeviceOpt = "auto",
          batch_size: BatchOpt = 64, rerank: RerankOpt = None, rerank_depth: DepthOpt = None,
          report: ReportOpt = None, out: OutOpt = None, as_json: JsonOpt = False, cache_dir: CacheOpt = None,
          no_cache: NoCacheOpt = False, quiet: QuietOpt = False, report_queries: ReportQueriesOpt = 100) -> None:
    """Google Landmarks v2 retrieval: mAP@100 (Public, Private, all) from the official CSVs."""
    from loupe.eval import gldv2 as mod

    options = _options(model, weights, device, batch_size, rerank, rerank_depth, cache_dir, no_cache, quiet,
                       report_queries)
    _run("gldv2", lambda: mod.evaluate(mod.load(data), options), report, out, as_json, report_queries)


def _imagetext(name: str, data: Path, model: str, weights: Path | None, device: str, batch_size: int,
               report: Path | None, out: Path | None, as_json: bool, cache_dir: Path | None, no_cache: bool,
               quiet: bool, report_queries: int) -> None:
    from loupe.eval import imagetext

    options = _options(model, weights, device, batch_size, None, None, cache_dir, no_cache, quiet, report_queries)
    _run(name, lambda: imagetext.evaluate(imagetext.load(name, data), options), report, out, as_json,
         report_queries)


@eval_app.command("flickr30k")
def flickr30k(data: DataOpt, model: ModelOpt = DEFAULT_MODEL, weights: WeightsOpt = None,
              device: DeviceOpt = "auto", batch_size: BatchOpt = 64, report: ReportOpt = None,
              out: OutOpt = None, as_json: JsonOpt = False, cache_dir: CacheOpt = None,
              no_cache: NoCacheOpt = False, quiet: QuietOpt = False,
              report_queries: ReportQueriesOpt = 100) -> None:
    """Flickr30k 1k test (Karpathy): text->image and image->text Recall@1/5/10."""
    _imagetext("flickr30k", **locals())


@eval_app.command("coco")
def coco(data: DataOpt, model: ModelOpt = DEFAULT_MODEL, weights: WeightsOpt = None, device: DeviceOpt = "auto",
         batch_size: BatchOpt = 64, report: ReportOpt = None, out: OutOpt = None, as_json: JsonOpt = False,
         cache_dir: CacheOpt = None, no_cache: NoCacheOpt = False, quiet: QuietOpt = False,
         report_queries: ReportQueriesOpt = 100) -> None:
    """MSCOCO 5k test (Karpathy): text->image and image->text Recall@1/5/10."""
    _imagetext("coco", **locals())


WeightOpt = Annotated[float, typer.Option("--weight", "-w", min=0.0, max=1.0,
                                          help="Fusion weight on the reference image: "
                                          "q = normalise(w*img + (1-w)*text).", metavar="X")]
ExcludeOpt = Annotated[bool | None, typer.Option("--exclude-reference/--keep-reference",
                                                 help="Drop the reference image from the ranking. "
                                                 "Default: the protocol's rule (CIRR drops it).",
                                                 show_default=False)]


def _composed(name: str, data: Path, weight: float, exclude_reference: bool | None, report: Path | None,
              out: Path | None, as_json: bool, report_queries: int, categories: list[str] | None = None,
              **opts: Any) -> None:
    from loupe.eval import composed

    options = _options(report_queries=report_queries, **opts)

    def compute() -> EvalResult:
        if name == "cirr":
            ds = composed.load_cirr(data)
        elif name == "circo":
            ds = composed.load_circo(data)
        else:
            ds = composed.load_fashioniq(data, categories or composed.FIQ_CATEGORIES)
        return composed.evaluate(ds, options, weight=weight, exclude_reference=exclude_reference)

    _run(name, compute, report, out, as_json, report_queries)


@eval_app.command("cirr")
def cirr(data: DataOpt, weight: WeightOpt = 0.5, exclude_reference: ExcludeOpt = None,
         model: ModelOpt = DEFAULT_MODEL, weights: WeightsOpt = None, device: DeviceOpt = "auto",
         batch_size: BatchOpt = 64, rerank: RerankOpt = None, rerank_depth: DepthOpt = None,
         report: ReportOpt = None, out: OutOpt = None, as_json: JsonOpt = False, cache_dir: CacheOpt = None,
         no_cache: NoCacheOpt = False, quiet: QuietOpt = False, report_queries: ReportQueriesOpt = 100) -> None:
    """CIRR validation: Recall@1/5/10/50 and Recall_subset@1/2/3 of composed queries."""
    _composed("cirr", **locals())


@eval_app.command("circo")
def circo(data: DataOpt, weight: WeightOpt = 0.5, exclude_reference: ExcludeOpt = None,
          model: ModelOpt = DEFAULT_MODEL, weights: WeightsOpt = None, device: DeviceOpt = "auto",
          batch_size: BatchOpt = 64, rerank: RerankOpt = None, rerank_depth: DepthOpt = None,
          report: ReportOpt = None, out: OutOpt = None, as_json: JsonOpt = False, cache_dir: CacheOpt = None,
          no_cache: NoCacheOpt = False, quiet: QuietOpt = False, report_queries: ReportQueriesOpt = 100) -> None:
    """CIRCO validation: mAP@5/10/25/50 of composed queries (several ground truths each)."""
    _composed("circo", **locals())


@eval_app.command("fashioniq")
def fashioniq(data: DataOpt, weight: WeightOpt = 0.5, exclude_reference: ExcludeOpt = None,
              categories: Annotated[list[str] | None, typer.Option(
                  "--category", help="dress, shirt or toptee (repeatable). Default: all three.",
                  show_default=False, metavar="TEXT")] = None,
              model: ModelOpt = DEFAULT_MODEL, weights: WeightsOpt = None, device: DeviceOpt = "auto",
              batch_size: BatchOpt = 64, rerank: RerankOpt = None, rerank_depth: DepthOpt = None,
              report: ReportOpt = None, out: OutOpt = None, as_json: JsonOpt = False, cache_dir: CacheOpt = None,
              no_cache: NoCacheOpt = False, quiet: QuietOpt = False,
              report_queries: ReportQueriesOpt = 100) -> None:
    """FashionIQ validation: R@10 and R@50 per category and their means."""
    _composed("fashioniq", **locals())


@eval_app.command("inquire")
def inquire(data: DataOpt,
            task: Annotated[str, typer.Option("--task", help="fullrank (whole gallery, top 50) or rerank "
                                              "(the fixed 100 per query).", metavar="TEXT")] = "fullrank",
            split: Annotated[str, typer.Option("--split", help="val or test.", metavar="TEXT")] = "test",
            gallery: Annotated[Path | None, typer.Option("--gallery", help="iNat24 images folder for "
                                                         "fullrank. Default: DATA/train.",
                                                         show_default=False, metavar="PATH")] = None,
            k: Annotated[int, typer.Option("--k", min=1, help="Cut-off of the fullrank task.", metavar="N")] = 50,
            model: ModelOpt = DEFAULT_MODEL, weights: WeightsOpt = None, device: DeviceOpt = "auto",
            batch_size: BatchOpt = 64, rerank: RerankOpt = None, rerank_depth: DepthOpt = None,
            report: ReportOpt = None, out: OutOpt = None, as_json: JsonOpt = False, cache_dir: CacheOpt = None,
            no_cache: NoCacheOpt = False, quiet: QuietOpt = False, report_queries: ReportQueriesOpt = 100) -> None:
    """INQUIRE: fullrank mAP@50 / nDCG@50 / MRR, or the rerank task over the fixed top 100."""
    from loupe.eval import inquire as mod

    if task not in ("fullrank", "rerank"):
        err.print(f"[bold red]error:[/] --task must be fullrank or rerank, got {task!r}")
        raise typer.Exit(2)
    options = _options(model, weights, device, batch_size, rerank, rerank_depth, cache_dir, no_cache, quiet,
                       report_queries)
    if task == "fullrank":
        def compute() -> EvalResult:
            return mod.evaluate_fullrank(mod.load_fullrank(data, split, gallery), options, k=k)
    else:
        def compute() -> EvalResult:
            return mod.evaluate_rerank(mod.load_rerank(data, split), options)
    _run(f"inquire-{task}", compute, report, out, as_json, report_queries)


@eval_app.command("disc21")
def disc21(data: DataOpt,
           gt: Annotated[Path | None, typer.Option("--gt", help="Ground-truth CSV. Default: "
                                                   "DATA/list_files/public_ground_truth.csv.",
                                                   show_default=False, metavar="PATH")] = None,
           k: Annotated[int, typer.Option("--k", min=1, help="References predicted per query.", metavar="N")] = 10,
           max_results: Annotated[int, typer.Option("--max-results", min=1, help="Most predictions kept "
                                                    "overall (the highest scores).", metavar="N")] = 500_000,
           model: ModelOpt = DEFAULT_MODEL, weights: WeightsOpt = None, device: DeviceOpt = "auto",
           batch_size: BatchOpt = 64, rerank: RerankOpt = None, rerank_depth: DepthOpt = None,
           report: ReportOpt = None, out: OutOpt = None, as_json: JsonOpt = False, cache_dir: CacheOpt = None,
           no_cache: NoCacheOpt = False, quiet: QuietOpt = False, report_queries: ReportQueriesOpt = 100) -> None:
    """DISC21 copy detection: micro-AP and recall at 90% precision."""
    from loupe.eval import copydetect

    options = _options(model, weights, device, batch_size, rerank, rerank_depth, cache_dir, no_cache, quiet,
                       report_queries)
    _run("disc21", lambda: copydetect.evaluate(copydetect.load(data, gt), options, k=k, max_results=max_results),
         report, out, as_json, report_queries)


@eval_app.command("custom")
def custom(queries: Annotated[Path, typer.Option("--queries", help="CSV of query,relevant rows: query is "
                                                 "text or an image path, relevant a path in the library.",
                                                 show_default=False, metavar="PATH")],
           library: Annotated[Path | None, typer.Option("--library", "-L", help="Library folder. Default: "
                                                        "the nearest .loupe above here.",
                                                        show_default=False, metavar="PATH")] = None,
           model: Annotated[str | None, typer.Option("--model", "-m", help="Must match the library's "
                                                     "model. Default: the library's.",
                                                     show_default=False, metavar="TEXT")] = None,
           weights: WeightsOpt = None, device: DeviceOpt = "auto", rerank: RerankOpt = None,
           rerank_depth: DepthOpt = None, report: ReportOpt = None, out: OutOpt = None,
           as_json: JsonOpt = False, quiet: QuietOpt = False, report_queries: ReportQueriesOpt = 100) -> None:
    """Your labelled queries against a library: mAP, Recall@1/5/10, nDCG@10, MRR."""
    from loupe.eval import custom as mod
    from loupe.library import Library, LibraryError, find_library

    path = library or find_library()
    if path is None:
        err.print("[bold red]error:[/] no library here: pass --library PATH (run `loupe index FOLDER` first)")
        raise typer.Exit(2)
    options = _options(model or "", weights, device, 64, rerank, rerank_depth, None, True, quiet, report_queries)

    def compute() -> EvalResult:
        try:
            lib = Library.open(path, model=model, weights=weights, device=device, create=False,
                               backend=options.backend, precision=options.precision)
        except LibraryError as exc:
            raise DatasetError(str(exc)) from exc
        try:
            return mod.evaluate(mod.load(queries, lib.root), lib, options)
        finally:
            lib.close()

    _run("custom", compute, report, out, as_json, report_queries)
