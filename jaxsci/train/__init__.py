"""jaxsci.train."""

from jaxsci.train.checkpoint import Checkpointer
from jaxsci.train.loop import Callback, FitResult, JsonlLogger, every, fit, read_jsonl
from jaxsci.train.run_dir import (
    make_run_dir,
    plot_curves,
    plot_scatter,
    to_jsonable,
    write_json,
    write_metrics,
)

__all__ = [
    "Callback",
    "Checkpointer",
    "FitResult",
    "JsonlLogger",
    "every",
    "fit",
    "make_run_dir",
    "plot_curves",
    "plot_scatter",
    "read_jsonl",
    "to_jsonable",
    "write_json",
    "write_metrics",
]
