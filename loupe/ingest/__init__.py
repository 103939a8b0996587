"""Indexing: plan (scan + catalog diff) -> read and embed (pure) -> apply (commit + report)."""

from loupe.ingest.apply import IndexReport
from loupe.ingest.plan import Plan, plan
from loupe.ingest.run import Progress, run_index

__all__ = ["IndexReport", "Plan", "Progress", "plan", "run_index"]
