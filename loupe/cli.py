"""The `loupe` command line: index a folder, search it, look at what is in it.

Every input is checked before any model loads, a wrong value is one line naming it
(exit code 2), Ctrl-C ends with "interrupted" (exit code 130), and results print as a
table on a terminal or in a format that pipes (`--format`).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.console import Console
from rich.markup import escape
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

from loupe.cli_output import FORMATS, printable, write_hits
from loupe.core.config import (
    ALLOWED_FORMATS,
    CATALOG_FILENAME,
    LIBRARY_DIRNAME,
    SETTINGS,
    IndexOptions,
    default,
)
from loupe.core.errors import DecodeError, LoupeError, QueryError
from loupe.core.types import Filters, SearchRequest
from loupe.library import Library, LibraryError, find_library
from loupe.models.device import check_device_name
from loupe.models.options import check_runtime, describe
from loupe.search.query import looks_like_expr, parse_box

err = Console(stderr=True, soft_wrap=True)  # long lines (paths, errors) are never wrapped or cut
USER_ERRORS = (LoupeError, FileNotFoundError)


class _Group(TyperGroup):
    """Every command's user errors become one red line and exit code 2, not a traceback;
    Ctrl-C becomes "interrupted" and exit code 130."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except USER_ERRORS as exc:
            err.print(f"[bold red]error:[/] {escape(printable(str(exc)))}", highlight=False)
            raise typer.Exit(2) from None
        except (KeyboardInterrupt, ImportError) as exc:
            # Ctrl-C while a library initialises (ONNX Runtime) surfaces as an ImportError
            # whose context is the interrupt.
            if isinstance(exc, ImportError) and not isinstance(exc.__context__, KeyboardInterrupt):
                raise
            err.print("[yellow]interrupted[/]: everything finished before this is saved; "
                      "run the same command again to carry on.")
            raise typer.Exit(130) from None


def _version(value: bool) -> None:
    if value:
        from loupe import __version__

        print(f"loupe {__version__}")
        raise typer.Exit()


app = typer.Typer(
    name="loupe",
    cls=_Group,
    help="Search your images by text, by example, or both.\n\n"
    "Start with `loupe index FOLDER`, then `loupe search \"a dog on a beach\"` from inside it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,       # plain help: examples keep their lines, no type tags
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """Search your images by text, by example, or both.

    Start with `loupe index FOLDER`, then `loupe search "a dog on a beach"` from inside it.
    """


# Options shared by several commands.
LibraryOpt = Annotated[Path | None, typer.Option(
    "--library", "-L", help="Library folder. Default: FOLDER/.loupe, or the nearest .loupe above here.",
    show_default=False, metavar="PATH")]
ModelOpt = Annotated[str | None, typer.Option(
    "--model", "-m", help="open_clip ARCH:TAG, e.g. ViT-B-32:laion2b_s34b_b79k. "
    "Default: the library's model (new libraries: ViT-B-32:laion2b_s34b_b79k, or $LOUPE_MODEL).",
    show_default=False, metavar="ARCH:TAG")]
WeightsOpt = Annotated[Path | None, typer.Option(
    "--weights", help="Local checkpoint file (or open_clip model folder) for --model's "
    "architecture: runs fully offline.", show_default=False, metavar="FILE")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.",
                                        metavar="DEVICE")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of a table.")]
BackendOpt = Annotated[str | None, typer.Option(
    "--backend", help="auto, torch, onnx or openvino. auto: torch on a GPU; on a CPU the model's "
    "ONNX export (made and checked against torch once), OpenVINO where measured faster. "
    "Default: $LOUPE_BACKEND or auto.", show_default=False, metavar="NAME")]
PrecisionOpt = Annotated[str | None, typer.Option(
    "--precision", help="auto, fp32, fp16 (GPU) or int8 / bf16 (CPU, opt-in; they report their "
    "agreement with fp32). auto: fp16 on a GPU, fp32 on a CPU. Default: $LOUPE_PRECISION or auto.",
    show_default=False, metavar="NAME")]


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:.1f} img/s" if task.speed else "- img/s", style="cyan")


def _progress(label: str, quiet: bool) -> Progress:
    """A bar with count, images/s and ETA on stderr; silent for --json or without a terminal."""
    columns = (TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), _RateColumn(),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    return Progress(*columns, console=err, disable=quiet or not err.is_terminal)


def _open(library: Path | None, model: str | None, weights: Path | None, device: str,
          create: bool = False, root: Path | None = None, backend: str | None = None,
          precision: str | None = None) -> Library:
    check_device_name(device)
    check_runtime(backend or default("backend"), precision or default("precision"), device)
    if weights is not None and not weights.exists():
        raise LibraryError(f"--weights {weights}: no such file or folder")
    if library is None:
        library = find_library()
        if library is None:
            raise LibraryError(
                "no library here or in any folder above; pass --library PATH "
                "or run `loupe index FOLDER` first"
            )
    return Library.open(library, model=model, weights=weights, device=device, root=root,
                        create=create, backend=backend, precision=precision)


def _index_with_progress(lib: Library, options: IndexOptions, quiet: bool, **runner: Any) -> Any:
    with _progress("indexing", quiet=quiet) as bar:
        task = bar.add_task("index", total=None)
        reading: list[Any] = []

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        def ocr_progress(done: int, total: int) -> None:
            if not reading:   # the OCR pass gets a bar of its own once it starts
                reading.append(bar.add_task("[bold]reading text", total=total))
            bar.update(reading[0], completed=done, total=total)

        return lib.index(options, progress=progress, ocr_progress=ocr_progress, **runner)


def _ray_runner(ray: bool, address: str | None, actors: str | None, gpus: float | None
               ) -> dict[str, Any]:
    """`Library.index` keywords for the --ray options (empty without them)."""
    if not (ray or address or actors or gpus is not None):
        return {}
    options: dict[str, Any] = {}
    if actors is not None:
        low, _, high = actors.partition("-")
        try:
            sizes = (int(low), int(high or low))
        except ValueError:
            raise typer.BadParameter(f"{actors!r}: give N or MIN-MAX", param_hint="--ray-actors") from None
        if not 1 <= sizes[0] <= sizes[1]:
            raise typer.BadParameter(f"{actors!r}: give N >= 1, or MIN-MAX with 1 <= MIN <= MAX",
                                     param_hint="--ray-actors")
        options["actors"] = sizes[0] if sizes[0] == sizes[1] else sizes
    if gpus is not None:
        options["num_gpus"] = gpus
    return {"runner": "ray", "ray_address": address, "ray_options": options}


@app.command()
def index(
    folder: Annotated[Path, typer.Argument(help="Folder of images to index (recursively).",
                                           exists=True, file_okay=False, resolve_path=True)],
    library: LibraryOpt = None,
    model: ModelOpt = None,
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
    backend: BackendOpt = None,
    precision: PrecisionOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Images per model call.",
                                            metavar="N")] = 32,
    workers: Annotated[int, typer.Option(min=0, help="Decode threads (0 = one per core).", metavar="N")] = 0,
    include: Annotated[list[str] | None, typer.Option(
        "--include", "-i", help="Only files matching this glob (repeatable), e.g. '*.png' or '2023/**'.",
        metavar="GLOB")] = None,
    exclude: Annotated[list[str] | None, typer.Option(
        "--exclude", "-x", help="Skip files matching this glob (repeatable).", metavar="GLOB")] = None,
    max_pixels: Annotated[int, typer.Option(min=1, help="Refuse images with more pixels (decompression bombs).",
                                            metavar="PIXELS")] = IndexOptions.max_pixels,
    max_file_mb: Annotated[float, typer.Option(min=0.001, help="Refuse files larger than this many MiB.",
                                               metavar="MIB")] = IndexOptions.max_file_bytes / 2**20,
    dba: Annotated[int | None, typer.Option(
        help="Database-side augmentation: blend each vector with its K nearest neighbours (0 turns it off).",
        show_default=False, metavar="K")] = None,
    index_spec: Annotated[str | None, typer.Option(
        "--index", help="Search index kind, a FAISS-like spec: Exact, Flat, HNSW32, IVF1024,PQ64x4fs,Refine; "
        "'auto' chooses by size (the default); or a Milvus collection, milvus:FILE.db or "
        "milvus:http://HOST:19530, with ?index=HNSW&ef=64... (docs/scale.md). Recorded in the library.",
        show_default=False,
        metavar="SPEC")] = None,
    local_features: Annotated[bool, typer.Option(
        "--local-features", help="Also extract local features now, for `--rerank spatial`.")] = False,
    prune: Annotated[bool, typer.Option(
        "--prune", help="Forget missing files even when most of the library is gone (otherwise "
        "such a run stops: an unmounted drive looks the same).")] = False,
    ocr: Annotated[bool | None, typer.Option(
        "--ocr/--no-ocr", help="Read the text in images (OCR, about 1.7 CPU-s a photo) so that "
        "searches find their words; the library remembers the choice for later runs. Needs "
        "pip install 'loupe-search[ocr]'.", show_default=False)] = None,
    ray: Annotated[bool, typer.Option(
        "--ray", help="Read, decode and embed on Ray (a local instance, or --ray-address); the "
        "plan and the commits stay here. Needs the [scale] extra; see docs/scale.md.")] = False,
    ray_address: Annotated[str | None, typer.Option(
        "--ray-address", help="The Ray cluster to join: 'auto' (on a node of it), HOST:6379 or "
        "ray://HOST:10001. Implies --ray.", show_default=False, metavar="ADDRESS")] = None,
    ray_actors: Annotated[str | None, typer.Option(
        "--ray-actors", help="Embedding actors on Ray: N, or MIN-MAX to let Ray scale them "
        "(default: one per GPU asked for, or half the cluster's CPUs).", show_default=False,
        metavar="N|MIN-MAX")] = None,
    ray_gpus: Annotated[float | None, typer.Option(
        "--ray-gpus", min=0, help="GPUs per embedding actor on Ray (the actors then run on CUDA).",
        show_default=False, metavar="G")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Index FOLDER: embed new and changed images, keep moved ones, forget deleted ones.

    Safe to interrupt (Ctrl-C, or a crash) at any moment: run the same command
    again and it carries on where it stopped. The model loads only when some
    image is new or changed.

    \b
    loupe index ~/Pictures
    loupe index ~/Pictures --exclude 'screenshots/**'
    loupe index ~/Pictures --model ViT-B-32 --weights ~/models/vit-b-32.safetensors
    loupe index ~/Pictures --ocr        (also read the text in images, now and later)
    loupe index ~/Pictures --ray                                  # a local Ray instance
    loupe index /mnt/photos --ray-address auto --ray-gpus 1       # on a node of a Ray cluster
    loupe index ~/Pictures --index 'milvus:photos.milvus.db?index=HNSW'    # search on Milvus Lite
    """
    runner = _ray_runner(ray, ray_address, ray_actors, ray_gpus)
    lib_path = (library or folder / LIBRARY_DIRNAME).expanduser().absolute()
    created = not (lib_path / CATALOG_FILENAME).exists()
    lib = _open(lib_path, model, weights, device, create=True, root=folder, backend=backend,
                precision=precision)
    options = IndexOptions(
        include=tuple(include or ()), exclude=tuple(exclude or ()), batch_size=batch_size,
        workers=workers, max_pixels=max_pixels, max_file_bytes=int(max_file_mb * 2**20),
        index_spec=index_spec, prune=prune, ocr=ocr,
    )
    try:
        if dba is not None:
            lib.set_dba(dba or None)
        report = _index_with_progress(lib, options, quiet=json_out, **runner)
    except (LoupeError, OSError):
        # A library that never got a model (the download failed, a bad checkpoint) is not
        # left half-made: the next command starts clean.
        if created and lib.catalog.active_space() is None:
            lib.close()
            shutil.rmtree(lib_path, ignore_errors=True)
        raise
    features: dict[str, int] | None = None
    if local_features:
        from loupe.search.stages.spatial import precompute

        ids = lib.all_vectors()[0]
        with _progress("local features", quiet=json_out) as bar:
            task = bar.add_task("features", total=len(ids))
            features = precompute(lib.store, ids, progress=lambda n: bar.advance(task, n))
    if json_out:
        extra = {"local_features": features} if features is not None else {}
        print(json.dumps({"library": str(lib.path), **report.to_dict(), **extra}, indent=2))
        return
    if report.scanned == 0:
        err.print(f"no images found in {escape(printable(str(folder)))} (looked for "
                  f"{'files matching ' + ', '.join(include) if include else 'the usual image endings'}"
                  "; hidden folders are skipped)")
        return
    parts = [f"{report.scanned} files", f"{report.added} added", f"{report.updated} updated",
             f"{report.moved} moved", f"{report.copies} copies", f"{report.removed} removed",
             f"{report.unchanged} unchanged", f"{report.errors} errors"]
    rate = f" ({report.embedded / report.seconds:.1f} img/s embedded)" if report.embedded and report.seconds else ""
    err.print(f"[green]done[/] in {report.seconds:.1f}s{rate}: " + ", ".join(parts))
    if report.encoder:
        err.print(f"  model ran on {escape(describe(report.encoder))}", highlight=False)
    for folder_rel in report.unreadable:
        err.print(f"  [yellow]unreadable folder[/] {escape(printable(folder_rel or '.'))}: "
                  "its images are kept as they were", highlight=False)
    if report.outside_links:
        err.print(f"  {report.outside_links} links to files outside {escape(printable(str(folder)))} "
                  "were not followed")
    for path, why in report.error_list[:20]:
        err.print(f"  [red]skipped[/] {escape(printable(path))}: {escape(printable(why))}", highlight=False)
    if len(report.error_list) > 20:
        err.print(f"  ... and {len(report.error_list) - 20} more (`loupe stats --json` lists all)")
    if features is not None:
        err.print("local features: " + ", ".join(f"{v} {k}" for k, v in features.items()))
    if report.ocr is not None:
        o = report.ocr
        err.print(f"text: read {o['read']} new contents in {o['seconds']:.1f}s ({o['with_text']} with "
                  f"words); {o['contents'] - o['todo'] + o['read']} of {o['contents']} read so far")
        for path, why in [(e["path"], e["error"]) for e in o["skipped"][:20]]:
            err.print(f"  [yellow]text not read[/] {escape(printable(path))}: {escape(printable(why))}",
                      highlight=False)
    if report.switch is not None:   # a model switch carried on (loupe/switch)
        sw = report.switch
        err.print(f"model switch: {sw['embedded']} images embedded with the new model; "
                  + ("it is now the active model" if sw["switched"] else
                     f"{len(sw['stale']) + len(sw['errors'])} files changed or unreadable"),
                  highlight=False)
    err.print(f"library: {escape(printable(str(lib.path)))}")


@app.command()
def search(
    query: Annotated[list[str] | None, typer.Argument(
        help="Text to search for. With --image, the edit to apply (\"in green\"). "
        "Query arithmetic: '2:golden retriever' + pool.jpg - fruit", show_default=False,
        metavar="[QUERY]...")] = None,
    image: Annotated[Path | None, typer.Option("--image", "-I", help="Search by this image file.",
                                               show_default=False, metavar="FILE")] = None,
    like: Annotated[list[str] | None, typer.Option(
        help="More like this indexed image (path or id). Repeat it, or add --unlike, for "
        "relevance feedback: more like these, added to the query.", show_default=False,
        metavar="PATH|ID")] = None,
    unlike: Annotated[list[str] | None, typer.Option(
        help="Fewer like this indexed image (repeatable; relevance feedback).",
        show_default=False, metavar="PATH|ID")] = None,
    diverse: Annotated[float | None, typer.Option(
        min=0, max=1, help="Vary the results (MMR): 1 = plain relevance, 0.7 a little variety, "
        "0.3 very varied.", show_default=False, metavar="LAMBDA")] = None,
    show_all: Annotated[bool, typer.Option(
        "--all", help="Show every result: no confidence cut-off, near-duplicates not folded "
        "(the confidence is still reported).")] = False,
    weight: Annotated[float, typer.Option(min=0, max=1, help="Image+text: weight of the image (1 = image only).",
                                          metavar="W")] = 0.5,
    box: Annotated[str | None, typer.Option(help="Search with a region of the query image: x0,y0,x1,y1 pixels.",
                                            show_default=False, metavar="X0,Y0,X1,Y1")] = None,
    top: Annotated[int, typer.Option("--top", "-k", min=1, max=10_000, help="How many results.",
                                     metavar="N")] = 20,
    threshold: Annotated[float | None, typer.Option(help="Drop results scoring below this.",
                                                    show_default=False, metavar="SCORE")] = None,
    folder: Annotated[str | None, typer.Option(
        help="Only images under this folder (relative to here, or to the indexed folder).",
        show_default=False, metavar="DIR")] = None,
    everywhere: Annotated[bool, typer.Option(
        "--everywhere", help="Search the whole library, not only the folder you are in.")] = False,
    glob: Annotated[str | None, typer.Option(
        help="Only paths matching this glob (.gitignore rules: '*.png' anywhere, 'paris/*.jpg' "
        "directly in paris/, '2023/**' a whole subtree).", show_default=False, metavar="GLOB")] = None,
    since: Annotated[str | None, typer.Option(help="Taken on or after this date (YYYY-MM-DD; EXIF, else file time).",
                                              show_default=False, metavar="DATE")] = None,
    until: Annotated[str | None, typer.Option(help="Taken on or before this date.", show_default=False,
                                              metavar="DATE")] = None,
    min_width: Annotated[int | None, typer.Option(min=1, max=2**31, help="Only images at least this wide.",
                                                  show_default=False, metavar="PX")] = None,
    min_height: Annotated[int | None, typer.Option(min=1, max=2**31, help="Only images at least this tall.",
                                                   show_default=False, metavar="PX")] = None,
    file_type: Annotated[list[str] | None, typer.Option(
        "--type", help="Only this format (repeatable): jpeg, png, webp, gif, bmp, tiff, heif, avif.",
        show_default=False, metavar="FORMAT")] = None,
    rerank: Annotated[str | None, typer.Option(
        help="Rerank the top results: superglobal, qe, spatial, or a chain 'superglobal,spatial'. "
        "`loupe rerankers` lists them.", show_default=False, metavar="CHAIN")] = None,
    rerank_depth: Annotated[int | None, typer.Option(min=1, help="How many first-stage results to rerank "
                                                     "(default: each reranker's own).", show_default=False,
                                                     metavar="M")] = None,
    text_only: Annotated[bool, typer.Option(
        "--text-only", help="Only the full-text index: words read in the images (--ocr), file and "
        "folder names, camera, date. No model loads.")] = False,
    vector_only: Annotated[bool, typer.Option(
        "--vector-only", help="Only the vectors: leave the full-text index out.")] = False,
    show_boxes: Annotated[Path | None, typer.Option(
        help="Write each result with its located box (from --rerank spatial) into this folder.",
        show_default=False, metavar="DIR")] = None,
    update: Annotated[bool, typer.Option(
        "--update", help="Bring the index up to date (new, changed, deleted files) before searching.")] = False,
    output: Annotated[str, typer.Option(
        "--format", "-f", help=f"Output: {', '.join(FORMATS)}. A table on a terminal; "
        "nothing is ever cut when piped.", metavar="FORMAT")] = "table",
    library: LibraryOpt = None,
    model: ModelOpt = None,
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
    backend: BackendOpt = None,
    precision: PrecisionOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Same as --format json.")] = False,
) -> None:
    """Search the library by text, by image, by image + text, or by an indexed image.

    Inside the indexed folder, only the folder you are in (and below) is searched,
    unless --everywhere.

    Results you can trust: a result shows only when its calibrated confidence clears
    the cut-off, so a query with no good match says "no confident match" instead of
    listing noise; near-duplicates fold into their best one ("+3 similar"). --all
    shows everything. The `answers` setting (`loupe settings`) holds the default.

    A text query searches the vectors and the full-text index (words read in the images
    with `loupe index --ocr`, file and folder names, camera, date) and fuses the two:
    images whose text holds every word come first, each saying which words matched.
    A phrase in double quotes must appear as written.

    \b
    loupe search "a dog on a beach"
    loupe search "a dog on a beach" --all --format json   # raw and calibrated scores
    loupe search --like a.jpg --like b.jpg --unlike c.jpg # more like these, not that
    loupe search "beach" --like sunset.jpg                # the text, moved toward sunset.jpg
    loupe search "church" --diverse 0.5                   # varied results
    loupe search --image query.jpg
    loupe search --image dress.jpg "in green" --weight 0.5
    loupe search --like holidays/IMG_0042.jpg --since 2023-01-01
    loupe search "2:golden retriever" + pool.jpg - fruit
    loupe search "sunset" --format paths | xargs -d '\\n' open
    loupe search '"invoice 2023" paid'         (the phrase must appear)
    loupe search receipt --text-only           (words and names only, no model)
    """
    fmt = "json" if json_out else output.lower()
    if fmt not in FORMATS:
        raise QueryError(f"--format {output!r}: use one of {', '.join(FORMATS)}")
    words = [w for w in (query or []) if w.strip()]
    box_value = parse_box(box) if box else None
    likes, unlikes = list(like or []), list(unlike or [])
    # One --like alone is "more like this image" (with text: the image, edited by the text);
    # several, or any --unlike, is relevance feedback on the query.
    feedback = len(likes) > 1 or bool(unlikes)
    if box_value is not None and image is None and (not likes or feedback):
        raise QueryError("--box selects a region of a query image: give --image FILE or one --like PATH|ID")
    if image is not None:
        _check_image_file(image)
    types = tuple(_format_name(t) for t in file_type or ())
    chain = _check_rerank(rerank, show_boxes)
    from loupe.search.answers import face_chain, summary

    # the answer stages judge vectors; words alone load no model
    chain = (chain or []) if text_only else face_chain(chain, show_all=show_all, diverse=diverse)
    if text_only and vector_only:
        raise QueryError("--text-only and --vector-only switch off each other's channel: give one")
    channels = "text" if text_only else "vector" if vector_only else None
    if text_only and (image is not None or likes or unlikes or not words):
        raise QueryError("--text-only searches words: give a text query, without --image or --like")
    if text_only and threshold is not None:
        raise QueryError("--threshold is a floor on vector similarity: --text-only has none")
    lib = _open(library, model, weights, device, backend=backend, precision=precision)
    if update:
        _index_with_progress(lib, IndexOptions(), quiet=fmt != "table")
    if lib.counts()["indexed"] == 0:
        raise LibraryError(f"the library {lib.path} has no indexed images yet: "
                           f"run `loupe index {lib.root}` (or check `loupe stats` for files that failed)")
    filters = Filters(folder=_library_folder(lib, folder, everywhere), glob=glob,
                      since=_date(since, "--since"), until=_date(until, "--until"),
                      min_width=min_width, min_height=min_height, types=types)
    if glob and not lib.count_matching(Filters(glob=glob)):
        raise QueryError(f"--glob {glob!r} matches no indexed image")
    liked = [_check_like(lib, ref) for ref in likes]
    unliked = [_check_like(lib, ref, "--unlike") for ref in unlikes]
    like_ref = liked[0] if liked and not feedback else None
    request = SearchRequest(k=top, filters=filters, threshold=threshold, rerank=chain,
                            rerank_depth=rerank_depth, box=box_value,
                            liked=liked if feedback else (), unliked=unliked, channels=channels)
    if words and looks_like_expr(words) and image is None and like_ref is None:
        request.expr = words
    else:
        request.text, request.image, request.like, request.weight = " ".join(words) or None, image, like_ref, weight
    hits = lib.search(request=request)
    answer = summary(chain, len(hits), top)
    if show_boxes is not None:
        _draw_boxes(lib, hits, show_boxes)
    if answer.get("message"):
        err.print(f"[yellow]{escape(answer['message'])}[/]; --all shows every result", highlight=False)
    elif not hits:
        err.print("no results" + (" above the threshold" if threshold is not None else "")
                  + ("" if filters.is_empty() else " with these filters"))
    write_hits(hits, fmt, lib.path, extra=answer)
    # The results are out: spare the exit a full garbage collection over every module's
    # objects (about 0.2 s of a cold query; finalizers and atexit still run).
    import gc

    gc.freeze()


def _check_image_file(path: Path) -> None:
    """A query image must exist and be an image: said before any model loads."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise QueryError(f"--image {path}: no such file")
    try:
        with Image.open(path) as im:
            im.size  # noqa: B018 - the header names the format and size
    except (UnidentifiedImageError, OSError) as exc:
        raise DecodeError(f"--image {path}: not an image ({exc.__class__.__name__})") from None


def _check_rerank(spec: str | None, show_boxes: Path | None) -> list[Any] | None:
    """Parse the chain before anything loads; --show-boxes needs a stage that makes boxes."""
    if not spec:
        if show_boxes is not None:
            raise QueryError("--show-boxes draws the boxes a spatial reranker finds: add --rerank spatial")
        return None
    from loupe.search import stages

    try:
        chain = stages.get(spec)
    except ValueError as exc:
        raise QueryError(str(exc)) from None
    if show_boxes is not None and not any(getattr(s, "makes_boxes", False) for s in chain):
        raise QueryError(f"--show-boxes needs a reranker that locates the match (spatial, spatial-orb); "
                         f"--rerank {spec!r} makes no boxes")
    return chain


def _check_like(lib: Library, ref: str, flag: str = "--like") -> int:
    """--like names an indexed image: one that failed to index is said with its reason."""
    try:
        image_id = lib.resolve(ref)
    except QueryError as exc:
        raise QueryError(f"{flag} {ref}: {exc}") from None
    rec = lib.record(image_id)
    if rec["status"] != "ok":
        raise QueryError(f"{flag} {ref}: {printable(rec['path'])} could not be indexed: {rec['error']}")
    return image_id


def _library_folder(lib: Library, folder: str | None, everywhere: bool) -> str | None:
    """The folder filter, relative to the library root: --folder as given (relative to here
    when that exists, else to the indexed folder), or the folder the user stands in."""
    if folder is None:
        if everywhere:
            return None
        here = Path.cwd().resolve()
        try:
            rel = here.relative_to(lib.root).as_posix()
        except ValueError:
            return None
        return None if rel == "." else rel
    candidate = Path(folder).expanduser()
    if candidate.is_dir():
        try:
            rel = candidate.resolve().relative_to(lib.root).as_posix()
        except ValueError:
            raise QueryError(f"--folder {folder}: outside the indexed folder {lib.root}") from None
    else:
        rel = folder.strip("/")
    rel = "" if rel == "." else rel
    if rel and not lib.count_matching(Filters(folder=rel)):
        raise QueryError(f"--folder {folder}: no indexed image under it (the library indexes {lib.root})")
    return rel or None


@app.command()
def stats(library: LibraryOpt = None, json_out: JsonOpt = False) -> None:
    """What is in the library: counts, model, formats, and the files that could not be read."""
    lib = _open(library, None, None, "cpu")
    info = lib.stats()
    if json_out:
        print(json.dumps(info, indent=2, default=str))
        return
    out = Console()
    out.print(f"[bold]library[/] {escape(printable(info['library']))}\n"
              f"[bold]root[/]    {escape(printable(info['root']))}")
    if not info["files"]:
        out.print(f"the library is empty: run `loupe index {escape(printable(info['root']))}`")
        return
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
    ran = (info.get("last_index") or {}).get("encoder")
    if ran:
        out.print(f"[bold]backend[/] {escape(describe(ran))} (the last index run)", highlight=False)
    text = info.get("text")
    if text:
        out.print(f"[bold]text[/]    OCR {'on' if text['ocr'] else 'off'}: {text['read']} of "
                  f"{text['contents']} contents read ({text['with_text']} with words)")
    for space in info["spaces"]:
        mark = "*" if space["active"] else " "
        out.print(f" {mark} space {space['id']}: {space['name']} ({space['identity'].get('dim', '?')}-d), "
                  f"{space['vectors']} vectors", highlight=False)
    if info.get("switch"):
        sw = info["switch"]
        bridge = sw["bridge"]
        out.print(f"[bold]switch[/]  to space {sw['target']} ({sw['name']}): {sw['embedded']}/{sw['total']} "
                  "images embedded; " + (f"searching through a {bridge['method']} bridge" if bridge else
                                          "bridge not fitted yet: searches use the old model")
                  + " (`loupe models fill` carries on)", highlight=False)
    for e in info["error_list"][:20]:
        out.print(f"  [red]error[/] {escape(printable(e['path']))}: {escape(printable(e['error']))}",
                  highlight=False)
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
    table.add_column("installed")
    for entry in entries:
        params = ", ".join(f"{k}={v}" for k, v in entry["parameters"].items())
        missing = entry["missing"]
        table.add_row(entry["name"], params, entry["doc"],
                      f"no: needs {', '.join(missing)} (pip install 'loupe-search[rerank-learned]')"
                      if missing else "yes")
    console = Console()
    console.print(table)
    console.print(
        "DBA is an index option, not a reranker: `loupe index --dba K` averages each stored "
        f"vector with its K nearest neighbours (weights s^{DEFAULT_ALPHA:g}; K={DEFAULT_K} "
        "is a common choice) and keeps that up to date as images come and go."
    )


@app.command("settings")
def settings(json_out: JsonOpt = False) -> None:
    """Every setting with its default (LOUPE_<NAME> in the environment overrides it)."""
    from loupe.core.config import default

    rows = [{"name": s.name, "value": default(s.name), "default": s.default, "help": s.help}
            for s in SETTINGS.values()]
    if json_out:
        print(json.dumps(rows, indent=2))
        return
    table = Table(show_edge=False, pad_edge=False)
    for col in ("name", "value", "help"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], str(r["value"]) + (" (env)" if r["value"] != r["default"] else ""),
                      r["help"])
    Console(width=None if sys.stdout.isatty() else 200).print(table)


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
    aliases = {"JPG": "JPEG", "TIF": "TIFF", "HEIC": "HEIF", "PGM": "PPM", "PBM": "PPM", "PNM": "PPM"}
    upper = name.strip().lstrip(".").upper()
    known = aliases.get(upper, upper)
    if known not in ALLOWED_FORMATS:
        names = sorted({f.lower() for f in ALLOWED_FORMATS} | {"jpg", "tif", "heic"})
        raise QueryError(f"--type {name!r}: unknown format; use one of {', '.join(names)}")
    return known


def _draw_boxes(lib: Library, hits: list[Any], folder: Path) -> None:
    from loupe.media.draw import draw_boxes

    folder.mkdir(parents=True, exist_ok=True)
    drawn = 0
    for rank, h in enumerate(hits, 1):
        if h.box is None:
            continue
        out = folder / f"{rank:03d}_{Path(h.meta['rel_path']).stem}.jpg"
        draw_boxes(lib.load_image(h.id), [h.box]).save(out, quality=90)
        drawn += 1
    err.print(f"{drawn} of {len(hits)} results located and drawn in {escape(printable(str(folder)))}"
              if drawn else "no result was located by the reranker: no boxes drawn")


# Sub-commands that live with their feature.
from loupe.dups.cli import register as _register_dups  # noqa: E402
from loupe.eval.cli import register as _register_eval  # noqa: E402
from loupe.server.cli import register as _register_serve  # noqa: E402
from loupe.switch.cli import register as _register_models  # noqa: E402

_register_serve(app)
_register_eval(app)
_register_dups(app)
_register_models(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
