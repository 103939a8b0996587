"""`loupe rerankers`: list the second-stage methods and their parameters."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table


def register(app: typer.Typer) -> None:
    """Add the `rerankers` command to the loupe CLI."""

    @app.command("rerankers")
    def rerankers(
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    ) -> None:
        """List the rerankers (--rerank NAME[:key=value...], comma-chained) with their defaults."""
        # Imported here: the methods pull in torch and OpenCV, which other commands need not load.
        from loupe.rerank import describe
        from loupe.rerank.dba import DEFAULT_ALPHA, DEFAULT_K

        entries = describe()
        if as_json:
            typer.echo(json.dumps(entries, indent=2))
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
