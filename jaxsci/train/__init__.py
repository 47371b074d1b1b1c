"""jaxsci.train."""

from jaxsci.train.checkpoint import Checkpointer
from jaxsci.train.gan import (  # issue 6: conditional GANs, per-label training
    DataPool,
    GANState,
    PerLabelResult,
    fit_gan,
    init_gan_state,
    make_gan_step,
    make_gan_trainer,
    make_pool,
    per_label_pools,
    sample_images,
    sample_per_label,
    train_conditional,
    train_per_label,
)
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
    "DataPool",
    "GANState",
    "PerLabelResult",
    "fit_gan",
    "init_gan_state",
    "make_gan_step",
    "make_gan_trainer",
    "make_pool",
    "per_label_pools",
    "sample_images",
    "sample_per_label",
    "train_conditional",
    "train_per_label",
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
