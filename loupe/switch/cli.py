"""`loupe models`: list a library's embedding spaces, add one, switch to it, drop the old one."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from loupe.core.config import IndexOptions
from loupe.core.errors import LibraryError

models_app = typer.Typer(
    help="The library's models (embedding spaces): list them, add one, switch to it without "
    "downtime, drop the old one.\n\n"
    "A switch embeds the library again with the new model in the background of your searches: "
    "once a sample is in both spaces, searches use the new model (images not yet re-embedded are "
    "reached through a learned linear bridge into the old space), and when every image is done "
    "the library moves to the new model in one step. Ctrl-C or a crash loses at most one batch: "
    "run `loupe models fill` (or `loupe index`, or the same switch) to carry on.\n\n"
    "Examples:\n\n"
    "  loupe models\n\n"
    "  loupe models switch ViT-L-14:datacomp_xl_s13b_b90k\n\n"
    "  loupe models switch ViT-B-16 --weights ~/models/finetuned.pt --later\n\n"
    "  loupe models drop ViT-B-32:laion2b_s34b_b79k",
    invoke_without_command=True,
    no_args_is_help=False,
)

FORMATS = ("table", "json", "jsonl", "csv", "tsv")
LibraryOpt = Annotated[Path | None, typer.Option(
    "--library", "-L", help="Library folder. Default: the nearest .loupe above here.",
    show_default=False, metavar="PATH")]
WeightsOpt = Annotated[Path | None, typer.Option(
    "--weights", help="Local checkpoint file (or open_clip model folder) for NAME's architecture.",
    show_default=False, metavar="FILE")]
FormatOpt = Annotated[str, typer.Option(
    "--format", "-f", help=f"Output: {', '.join(FORMATS)}.", metavar="FORMAT")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.", metavar="DEVICE")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Images per model call.",
                                      metavar="N")]
WorkersOpt = Annotated[int, typer.Option("--workers", min=0, help="Decode threads; 0 = one per "
                                         "core, at least 2.", metavar="N")]
NameArg = Annotated[str, typer.Argument(help="The model: ARCH:TAG, ARCH with --weights, or a space id "
                                        "from `loupe models`.", show_default=False, metavar="NAME")]


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")


def _open(library: Path | None, device: str = "auto") -> Any:
    from loupe.cli import _open as open_library

    return open_library(library, None, None, device)


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise LibraryError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")


@models_app.callback()
def list_models(ctx: typer.Context, library: LibraryOpt = None, fmt: FormatOpt = "table") -> None:
    """List the library's models: which is active, which a switch is filling, how many images
    each has embedded."""
    if ctx.invoked_subcommand is not None:
        return
    _check_format(fmt)
    lib = _open(library, "cpu")
    rows = lib.models()
    _print(rows, fmt)


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    pipeline = row.get("pipeline") or {}
    bridge = row.get("bridge") or {}
    return {"id": row["id"], "name": row["name"], "model": row["model"], "weights": row["weights"] or "",
            "dim": row["dim"], "image_size": row["image_size"],
            "pipeline": ",".join(f"{k}={v}" for k, v in pipeline.items()),
            "embedded": row["embedded"], "total": row["total"],
            "state": "active" if row["active"] else "target" if row["target"] else "",
            "bridge": f"{bridge['method']} (n={bridge['n']})" if bridge and row["target"] else ""}


def _print(rows: list[dict[str, Any]], fmt: str) -> None:
    if fmt == "json":
        print(json.dumps(rows, indent=2, default=str))
    elif fmt == "jsonl":
        for r in rows:
            print(json.dumps(r, default=str))
    elif fmt in ("csv", "tsv"):
        flat = [_flat(r) for r in rows]
        if flat:
            writer = csv.DictWriter(sys.stdout, fieldnames=list(flat[0]),
                                    delimiter="," if fmt == "csv" else "\t", lineterminator="\n")
            writer.writeheader()
            writer.writerows(flat)
    else:
        table = Table(show_edge=False, pad_edge=False)
        for col in ("id", "model", "weights", "dim", "pixels", "embedded", "state", "bridge"):
            table.add_column(col)
        for r in rows:
            f = _flat(r)
            table.add_row(str(f["id"]), escape(f["name"]), escape(f["weights"]), str(f["dim"]),
                          f"{f['image_size']}px {(r.get('pipeline') or {}).get('decode', '')}",
                          f"{f['embedded']}/{f['total']}", f["state"], f["bridge"])
        Console(width=None if sys.stdout.isatty() else 200).print(table)


@models_app.command("add")
def add(name: NameArg, weights: WeightsOpt = None, library: LibraryOpt = None,
        device: DeviceOpt = "auto") -> None:
    """Add a model to the library (an empty space). Nothing is embedded until a switch.

    Example: loupe models add ViT-L-14:datacomp_xl_s13b_b90k
    """
    _check_weights(weights)
    lib = _open(library, device)
    space, created = lib.add_model(name, weights)
    print(f"{'added' if created else 'already there:'} space {space} ({name})")


@models_app.command("switch")
def switch(name: NameArg, weights: WeightsOpt = None, library: LibraryOpt = None,
           device: DeviceOpt = "auto",
           later: Annotated[bool, typer.Option(
               "--later", help="Only make NAME the target; `loupe index`, `loupe models fill` or a "
               "running `loupe serve` re-index does the embedding.")] = False,
           batch_size: BatchOpt = 32, workers: WorkersOpt = 0,
           json_out: Annotated[bool, typer.Option("--json", help="Print the fill's report as JSON.")] = False,
           ) -> None:
    """Move the library to another model without downtime: embed every image with it (searches
    keep working meanwhile), then make it the active model in one step.

    Interrupt it at any time; the same command, `loupe models fill` or `loupe index` carries on.

    Example: loupe models switch ViT-L-14:datacomp_xl_s13b_b90k
    """
    _check_weights(weights)
    lib = _open(library, device)
    space = lib.switch_model(name, weights)
    if space == lib.catalog.active_space():
        print(f"switch cancelled: {name} stays the active model")
        return
    if later:
        print(f"space {space} ({name}) is the switch's target; `loupe models fill` embeds it")
        return
    _fill(lib, IndexOptions(batch_size=batch_size, workers=workers), json_out)


@models_app.command("fill")
def fill(library: LibraryOpt = None, device: DeviceOpt = "auto",
         batch_size: BatchOpt = 32, workers: WorkersOpt = 0,
         json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
         ) -> None:
    """Carry on the switch under way (after Ctrl-C, a crash, or `switch --later`)."""
    lib = _open(library, device)
    if lib.stats()["switch"] is None:
        raise LibraryError("no model switch is under way (`loupe models switch NAME` starts one)")
    _fill(lib, IndexOptions(batch_size=batch_size, workers=workers), json_out)


def _fill(lib: Any, options: IndexOptions, json_out: bool) -> None:
    from loupe.cli import _progress

    with _progress("embedding", quiet=json_out) as bar:
        task = bar.add_task("fill", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        report = lib.fill_switch(progress, options)
    if json_out:
        print(json.dumps(report.to_dict(), indent=2, default=str))
        return
    out = Console(stderr=True, soft_wrap=True)
    if report.bridge:
        out.print(f"bridge: {report.bridge['method']} on {report.bridge['n']} images "
                  "(searches now use the new model)", highlight=False)
    for rel in report.stale[:10]:
        out.print(f"  changed since indexed: {escape(rel)}", highlight=False)
    for rel, error in report.errors[:10]:
        out.print(f"  [red]error[/] {escape(rel)}: {escape(error)}", highlight=False)
    if report.switched:
        out.print(f"done: {report.embedded} images embedded; the new model is now active "
                  "(`loupe models drop OLD` frees the old one)", highlight=False)
    else:
        out.print(f"{report.embedded} images embedded; {len(report.stale) + len(report.errors)} files "
                  "changed or unreadable: run `loupe index` to bring them up to date (it finishes "
                  "the switch)", highlight=False)


@models_app.command("drop")
def drop(name: NameArg, weights: WeightsOpt = None, library: LibraryOpt = None) -> None:
    """Delete a model's vectors and index files (never the active model's).

    Example: loupe models drop ViT-B-32:laion2b_s34b_b79k
    """
    lib = _open(library, "cpu")
    result = lib.drop_model(name, weights)
    print(f"dropped space {result['space']} ({name}): {result['vectors']} vectors deleted")


def _check_weights(weights: Path | None) -> None:
    if weights is not None and not weights.exists():
        raise LibraryError(f"--weights {weights}: no such file or folder")
