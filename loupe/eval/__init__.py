"""Evaluation harness: standard retrieval protocols on local copies of the datasets.

`loupe.eval.metrics` holds the metric functions (numpy only, usable alone);
one module per protocol reads a dataset folder in its official layout and
returns an `EvalResult`; `report` renders it as HTML; `cli` is `loupe eval`.
"""
