"""Configuration of the per-label vs single conditional GAN study on scikit-learn digits.

Equal compute: every model family gets the same number of training examples through its
generator and critic updates. A per-label run trains ``n_labels`` models for ``steps``
generator updates at ``batch_size`` images each. Its single conditional baseline spends the
same total in one of two ways (``baseline_schedule``):

* ``"larger_batch"`` (default): the same ``steps`` updates at ``n_labels * batch_size``
  images each -- the same number of sequential updates, hence the same wall-clock when the
  per-label models run on ``n_labels`` workers (the seed papers' setting);
* ``"more_steps"``: ``n_labels * steps`` updates at ``batch_size`` images each -- the same
  per-update cost, ten times as many updates.

Critic updates scale the same way (``n_critic`` per generator update).
"""

from __future__ import annotations

from dataclasses import dataclass

MODELS = ("perlabel_wcgan", "perlabel_dcgan", "baseline_wcgan", "baseline_dcgan")


@dataclass(frozen=True)
class Config:
    """All knobs of :func:`experiments.cgan_digits.train.train_and_evaluate`.

    Attributes:
      image_size: 8 (native digits) or a larger power of two such as 32 (copies upscaled
        by pixel replication, i.e. nearest-neighbour, the heavier variant:
        :func:`jaxsci.data.digits.upscale`);
        samples are block-averaged back to 8 x 8 for the metrics and the ``.npz`` files
        (which inverts the replication exactly on the data).
      steps: generator updates per model.
      batch_size: images per update of each per-label model (baselines: ``n_labels`` x it).
      g_features, d_features, latent_dim: model sizes.
      n_critic, gp_weight: W-CGAN critic updates per generator update and GP weight.
      lr_wgan, lr_dcgan: Adam learning rates (betas 0.5/0.9 for W-CGAN, 0.5/0.999 DC-CGAN).
      chunk_steps: steps per compiled call (progress bar and checkpoint granularity).
      samples_per_label: generated images per label for metrics and the ``.npz`` files
        (FIDs are scored at ``min(samples_per_label, held-out count)`` images per label,
        the size of the real-vs-real floor; see :mod:`experiments.cgan_digits.train`).
      classifier_steps: full-batch training steps of the metric classifier.
      baseline_schedule: how the baselines spend the equal budget ("larger_batch" or
        "more_steps", see above).
      strategy: per-label parallelism: "vmap" (one device), "shard" (device mesh) or
        "mpi" (labels over ranks; run under mpirun).
      models: which of :data:`MODELS` to train.
      seed: everything random derives from it.
      test_fraction: held-out share of the digits (for the real-vs-real FID floor, whose
        size caps the ``n`` all FIDs are compared at).
      out_root: where run folders are created.
    """

    image_size: int = 8
    steps: int = 400
    batch_size: int = 32
    g_features: int = 32
    d_features: int = 32
    latent_dim: int = 32
    n_critic: int = 5
    gp_weight: float = 10.0
    lr_wgan: float = 2e-4
    lr_dcgan: float = 2e-4
    chunk_steps: int = 50
    samples_per_label: int = 200
    classifier_steps: int = 600
    baseline_schedule: str = "larger_batch"
    strategy: str = "vmap"
    models: tuple[str, ...] = MODELS
    seed: int = 0
    test_fraction: float = 0.25
    out_root: str = "runs"

    def __post_init__(self) -> None:
        unknown = sorted(set(self.models) - set(MODELS))
        if unknown:
            raise ValueError(f"unknown models {unknown}; choose from {list(MODELS)}")
        if self.baseline_schedule not in ("larger_batch", "more_steps"):
            raise ValueError(
                f"baseline_schedule must be larger_batch or more_steps, "
                f"got {self.baseline_schedule!r}"
            )
        if self.strategy not in ("vmap", "shard", "mpi"):
            raise ValueError(f"strategy must be vmap, shard or mpi, got {self.strategy!r}")
        if self.image_size < 8 or self.image_size & (self.image_size - 1):
            raise ValueError(f"image_size must be a power of two >= 8, got {self.image_size}")
        counts = ("steps", "batch_size", "chunk_steps", "samples_per_label", "classifier_steps")
        for name in counts + ("n_critic", "g_features", "d_features", "latent_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr_wgan", "lr_dcgan"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not self.gp_weight >= 0:
            raise ValueError(f"gp_weight must be >= 0, got {self.gp_weight}")
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"test_fraction must lie in (0, 1), got {self.test_fraction}")


def tiny() -> Config:
    """Seconds-scale config for smoke tests."""
    return Config(
        steps=4,
        batch_size=8,
        g_features=8,
        d_features=8,
        latent_dim=8,
        n_critic=2,
        chunk_steps=2,
        samples_per_label=12,
        classifier_steps=50,
    )
