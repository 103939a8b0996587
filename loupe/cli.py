"""The `loupe` command line: index a folder, search it, look at what is in it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from loupe.core.config import LIBRARY_DIRNAME, IndexOptions
from loupe.core.types import Filters
from loupe.library import Library, LibraryError, find_library
from loupe.media.decode import DecodeError
from loupe.models.openclip import ModelError
from loupe.search.query import QueryError, looks_like_expr, parse_box

err = Console(stderr=True)
USER_ERRORS = (LibraryError, QueryError, ModelError, DecodeError, FileNotFoundError)


class _Group(TyperGroup):
    """Every command's user errors become one red line and exit code 2, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except USER_ERRORS as exc:
            err.print(f"[bold red]error:[/] {exc}", highlight=False)
            raise typer.Exit(2) from None


app = typer.Typer(
    name="loupe",
    cls=_Group,
    help="Search your images by text, by example, or both.\n\n"
    "Start with `loupe index FOLDER`, then `loupe search \"a dog on a beach\"` from inside it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)

# Options shared by several commands.
LibraryOpt = Annotated[Path | None, typer.Option(
    "--library", "-L", help="Library folder. Default: FOLDER/.loupe, or the nearest .loupe above here.",
    show_default=False)]
ModelOpt = Annotated[str | None, typer.Option(
    "--model", "-m", help="open_clip ARCH:TAG, e.g. ViT-B-32:laion2b_s34b_b79k. "
    "Default: the library's model (new libraries: ViT-B-32:laion2b_s34b_b79k).", show_default=False)]
WeightsOpt = Annotated[Path | None, typer.Option(
    "--weights", help="Local checkpoint file (or open_clip model folder) for --model's "
    "architecture: runs fully offline.", show_default=False)]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or mps.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of a table.")]


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:.1f} img/s" if task.speed else "- img/s", style="cyan")


def _progress(label: str, quiet: bool) -> Progress:
    """A bar with count, images/s and ETA on stderr; silent for --json or without a terminal."""
    columns = (TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), _RateColumn(),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    return Progress(*columns, console=err, disable=quiet or not err.is_terminal)


def _open(library: Path | None, model: str | None, weights: Path | None, device: str,
          create: bool = False, root: Path | None = None) -> Library:
    if library is None:
        library = find_library()
        if library is None:
            raise LibraryError(
                "no library here or in any folder above; pass --library PATH "
                "or run `loupe index FOLDER` first"
            )
    return Library.open(library, model=model, weights=weights, device=device, root=root,
                        create=create)


@app.command()
def index(
    folder: Annotated[Path, typer.Argument(help="Folder of images to index (recursively).",
                                           exists=True, file_okay=False, resolve_path=True)],
    library: LibraryOpt = None,
    model: ModelOpt = None,
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Images per model call.")] = 32,
    workers: Annotated[int, typer.Option(min=0, help="Decode threads (0 = one per core).")] = 0,
    include: Annotated[list[str] | None, typer.Option(
        "--include", "-i", help="Only files matching this glob (repeatable), e.g. '*.png' or '2023/**'.")] = None,
    exclude: Annotated[list[str] | None, typer.Option(
        "--exclude", "-x", help="Skip files matching this glob (repeatable).")] = None,
    max_pixels: Annotated[int, typer.Option(help="Refuse images with more pixels (decompression bombs).")] = IndexOptions.max_pixels,
    max_file_mb: Annotated[float, typer.Option(help="Refuse files larger than this many MiB.")] = IndexOptions.max_file_bytes / 2**20,
    dba: Annotated[int | None, typer.Option(
        help="Database-side augmentation: blend each vector with its K nearest neighbours (0 turns it off).",
        show_default=False)] = None,
    index_spec: Annotated[str | None, typer.Option(
        "--index", help="Search index kind, a FAISS-like spec: Exact, Flat, HNSW32, IVF1024,PQ64,Refine; "
        "'auto' chooses by size (the default). Recorded in the library.", show_default=False)] = None,
    local_features: Annotated[bool, typer.Option(
        "--local-features", help="Also extract local features now, for `--rerank spatial`.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Index FOLDER: embed new and changed images, keep moved ones, forget deleted ones.

    Safe to interrupt (Ctrl-C, or a crash) at any moment: run the same command
    again and it carries on where it stopped.
    """
    lib = _open(library or folder / LIBRARY_DIRNAME, model, weights, device, create=True, root=folder)
    if dba is not None:
        lib.set_dba(dba or None)
    options = IndexOptions(
        include=tuple(include or ()), exclude=tuple(exclude or ()), batch_size=batch_size,
        workers=workers, max_pixels=max_pixels, max_file_bytes=int(max_file_mb * 2**20),
        index_spec=index_spec,
    )
    with _progress("indexing", quiet=json_out) as bar:
        task = bar.add_task("index", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        try:
            report = lib.index(options, progress=progress)
        except KeyboardInterrupt:
            bar.stop()
            err.print("[yellow]interrupted[/]: every finished batch is saved; "
                      "run the same command again to finish.")
            raise typer.Exit(130) from None
    features: dict[str, int] | None = None
    if local_features:
        from loupe.search.stages.spatial import precompute

        ids = lib.all_vectors()[0]
        with _progress("local features", quiet=json_out) as bar:
            task = bar.add_task("features", total=len(ids))
            features = precompute(lib, ids, progress=lambda n: bar.advance(task, n))
    if json_out:
        extra = {"local_features": features} if features is not None else {}
        print(json.dumps({"library": str(lib.path), **report.to_dict(), **extra}, indent=2))
        return
    parts = [f"{report.scanned} files", f"{report.added} added", f"{report.updated} updated",
             f"{report.moved} moved", f"{report.copies} copies", f"{report.removed} removed",
             f"{report.unchanged} unchanged", f"{report.errors} errors"]
    rate = report.embedded / report.seconds if report.seconds else 0
    err.print(f"[green]done[/] in {report.seconds:.1f}s ({rate:.1f} img/s embedded): " + ", ".join(parts))
    for path, why in report.error_list[:20]:
        err.print(f"  [red]skipped[/] {path}: {why}", highlight=False)
    if len(report.error_list) > 20:
        err.print(f"  ... and {len(report.error_list) - 20} more (`loupe stats --json` lists all)")
    if features is not None:
        err.print("local features: " + ", ".join(f"{v} {k}" for k, v in features.items()))
    err.print(f"library: {lib.path}")


@app.command()
def search(
    query: Annotated[list[str] | None, typer.Argument(
        help="Text to search for. With --image, the edit to apply (\"in green\"). "
        "Query arithmetic: '2:golden retriever' + pool.jpg - fruit", show_default=False)] = None,
    image: Annotated[Path | None, typer.Option("--image", "-I", help="Search by this image file.",
                                               show_default=False)] = None,
    like: Annotated[str | None, typer.Option(help="More like this indexed image (path or id).",
                                             show_default=False)] = None,
    weight: Annotated[float, typer.Option(min=0, max=1, help="Image+text: weight of the image (1 = image only).")] = 0.5,
    box: Annotated[str | None, typer.Option(help="Search with a region of the query image: x0,y0,x1,y1 pixels.",
                                            show_default=False)] = None,
    top: Annotated[int, typer.Option("--top", "-k", min=1, help="How many results.")] = 20,
    threshold: Annotated[float | None, typer.Option(help="Drop results scoring below this.", show_default=False)] = None,
    folder: Annotated[str | None, typer.Option(help="Only images under this folder (relative to the root).",
                                               show_default=False)] = None,
    glob: Annotated[str | None, typer.Option(help="Only paths matching this glob, e.g. '*.png'.",
                                             show_default=False)] = None,
    since: Annotated[str | None, typer.Option(help="Taken on or after this date (YYYY-MM-DD; EXIF, else file time).",
                                              show_default=False)] = None,
    until: Annotated[str | None, typer.Option(help="Taken on or before this date.", show_default=False)] = None,
    min_width: Annotated[int | None, typer.Option(help="Only images at least this wide.", show_default=False)] = None,
    min_height: Annotated[int | None, typer.Option(help="Only images at least this tall.", show_default=False)] = None,
    file_type: Annotated[list[str] | None, typer.Option(
        "--type", help="Only this format (repeatable): jpeg, png, webp, gif, bmp, tiff, heif.",
        show_default=False)] = None,
    rerank: Annotated[str | None, typer.Option(
        help="Rerank the top results: superglobal, qe, spatial, or a chain 'superglobal,spatial'. "
        "`loupe rerankers` lists them.", show_default=False)] = None,
    rerank_depth: Annotated[int | None, typer.Option(min=1, help="How many first-stage results to rerank "
                                                     "(default: each reranker's own).", show_default=False)] = None,
    show_boxes: Annotated[Path | None, typer.Option(
        help="Write each result with its located box (from --rerank spatial) into this folder.",
        show_default=False)] = None,
    library: LibraryOpt = None,
    model: ModelOpt = None,
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
) -> None:
    """Search the library by text, by image, by image + text, or by an indexed image.

    \b
    loupe search "a dog on a beach"
    loupe search --image query.jpg
    loupe search --image dress.jpg "in green" --weight 0.5
    loupe search --like holidays/IMG_0042.jpg --since 2023-01-01
    loupe search "2:golden retriever" + pool.jpg - fruit
    """
    words = [w for w in (query or []) if w.strip()]
    lib = _open(library, model, weights, device)
    filters = Filters(folder=folder, glob=glob, since=_date(since, "--since"), until=_date(until, "--until"),
                      min_width=min_width, min_height=min_height,
                      types=tuple(_format_name(t) for t in file_type or ()))
    kwargs: dict[str, Any] = dict(k=top, filters=filters, threshold=threshold, rerank=rerank,
                                  rerank_depth=rerank_depth, box=parse_box(box) if box else None)
    if words and looks_like_expr(words) and image is None and like is None:
        hits = lib.search(expr=words, **kwargs)
    else:
        hits = lib.search(" ".join(words) or None, image=image, like=like, weight=weight, **kwargs)
    if show_boxes is not None:
        _draw_boxes(lib, hits, show_boxes)
    if json_out:
        print(json.dumps({"library": str(lib.path), "results": [h.to_dict() for h in hits]}, indent=2))
        return
    if not hits:
        err.print("no results" + (" above the threshold" if threshold is not None else ""))
        return
    table = Table(show_edge=False, pad_edge=False)
    for col, just in (("#", "right"), ("score", "right"), ("path", "left"), ("size", "right"), ("date", "left")):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for rank, h in enumerate(hits, 1):
        size = f"{h.meta['width']}x{h.meta['height']}" if h.meta.get("width") else ""
        # Paths are text, not Rich markup: a file may be called "[draft] cat.jpg".
        path = Text(h.meta["rel_path"]) + (Text(" ▣ box", style="green") if h.box else Text(""))
        table.add_row(str(rank), f"{h.score:.4f}", path,
                      size, (h.meta.get("date") or "")[:10])
    Console().print(table)


@app.command()
def stats(library: LibraryOpt = None, json_out: JsonOpt = False) -> None:
    """What is in the library: counts, model, formats, and the files that could not be read."""
    lib = _open(library, None, None, "cpu")
    info = lib.stats()
    if json_out:
        print(json.dumps(info, indent=2, default=str))
        return
    out = Console()
    out.print(f"[bold]library[/] {info['library']}\n[bold]root[/]    {info['root']}")
    out.print(f"[bold]model[/]   {info['model']} ({info['model_identity'].get('dim', '?')}-d)")
    out.print(f"{info['files']} files: {info['indexed']} indexed, {info['errors']} errors; "
              f"{info['vectors']} distinct vectors; {info['library_bytes'] / 2**20:.1f} MiB on disk")
    if info["formats"]:
        out.print("formats: " + ", ".join(f"{k} {v}" for k, v in info["formats"].items()))
    index = info["index"]
    if index:
        recall = index.get("recall_at_10")
        out.print(f"[bold]index[/]   {index.get('spec')}: {index.get('count')} vectors, "
                  f"{index.get('ram_bytes', 0) / 2**20:.1f} MiB in RAM, "
                  f"{index.get('disk_bytes', 0) / 2**20:.1f} MiB on disk"
                  + (f", recall@10 {recall:.3f} against exact" if recall is not None else ""))
    for space in info["spaces"]:
        mark = "*" if space["active"] else " "
        out.print(f" {mark} space {space['id']}: {space['name']} ({space['identity'].get('dim', '?')}-d), "
                  f"{space['vectors']} vectors", highlight=False)
    for e in info["error_list"][:20]:
        out.print(f"  [red]error[/] {e['path']}: {e['error']}", highlight=False)
    if len(info["error_list"]) > 20:
        out.print(f"  ... and {len(info['error_list']) - 20} more (--json lists all)")


@app.command("rerankers")
def rerankers(json_out: JsonOpt = False) -> None:
    """List the rerankers (--rerank NAME[:key=value...], comma-chained) with their defaults."""
    # Imported here: the methods pull in torch and OpenCV, which other commands need not load.
    from loupe.index.dba import DEFAULT_ALPHA, DEFAULT_K
    from loupe.search.stages import describe

    entries = describe()
    if json_out:
        print(json.dumps(entries, indent=2))
        return
    table = Table(title="Rerankers (--rerank name[:key=value...], chain with commas)")
    table.add_column("name", style="bold")
    table.add_column("parameters (defaults)")
    table.add_column("what it does")
    for entry in entries:
        params = ", ".join(f"{k}={v}" for k, v in entry["parameters"].items())
        table.add_row(entry["name"], params, entry["doc"])
    console = Console()
    console.print(table)
    console.print(
        "DBA is an index option, not a reranker: `loupe index --dba K` averages each stored "
        f"vector with its K nearest neighbours (weights s^{DEFAULT_ALPHA:g}; K={DEFAULT_K} "
        "is a common choice) and keeps that up to date as images come and go."
    )


def _date(value: str | None, flag: str) -> str | None:
    if value is None:
        return None
    from datetime import date, datetime

    try:
        (datetime.fromisoformat if "T" in value else date.fromisoformat)(value)
    except ValueError:
        raise QueryError(f"{flag} wants a date like 2024-05-31, got {value!r}") from None
    return value


def _format_name(name: str) -> str:
    aliases = {"JPG": "JPEG", "TIF": "TIFF", "HEIC": "HEIF"}
    upper = name.strip().lstrip(".").upper()
    return aliases.get(upper, upper)


def _draw_boxes(lib: Library, hits: list[Any], folder: Path) -> None:
    from loupe.media.draw import draw_boxes

    folder.mkdir(parents=True, exist_ok=True)
    for rank, h in enumerate(hits, 1):
        if h.box is None:
            continue
        out = folder / f"{rank:03d}_{Path(h.meta['rel_path']).stem}.jpg"
        draw_boxes(lib.load_image(h.id), [h.box]).save(out, quality=90)
    err.print(f"boxes drawn in {folder}")


# Sub-commands that live with their feature.
from loupe.eval.cli import register as _register_eval  # noqa: E402
from loupe.server.cli import register as _register_serve  # noqa: E402

_register_serve(app)
_register_eval(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
