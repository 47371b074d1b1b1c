"""Classifier-based generation metrics: FID, inception score, conditional accuracy.

The feature extractor is a small classifier trained in the framework at run time (for
scikit-learn digits: seconds on a CPU), not downloaded Inception weights:

* :func:`fit_feature_classifier` -- trains an :class:`~jaxsci.models.classifier.MLPClassifier`
  and returns a :class:`FeatureClassifier` (penultimate features + class probabilities);
* :func:`frechet_distance` -- FID between two feature sets (Gaussian fit, float64);
* :func:`inception_score` -- ``exp E_x KL(p(y|x) || p(y))`` from class probabilities;
* :func:`evaluate_samples` -- overall and per-label FID, inception score and the fraction of
  samples classified as the label they were conditioned on.
* :func:`matched_counts`, :func:`equal_n_fid` -- FID at a fixed sample size and label mix.

FID is biased upwards by a term that shrinks like ``1/n`` with the number ``n`` of samples
scored (the covariance estimates are noisy): two FIDs are comparable only at equal ``n``.
:func:`equal_n_fid` scores disjoint subsets of a given per-label composition and averages
them; scoring real held-out images and generated ones with the same composition (from
:func:`matched_counts`) gives a "real vs real" floor at the models' ``n``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxsci._checks import is_int_at_least
from jaxsci.models.classifier import MLPClassifier

__all__ = [
    "FeatureClassifier",
    "equal_n_fid",
    "equal_n_subsets",
    "evaluate_samples",
    "fit_feature_classifier",
    "frechet_distance",
    "inception_score",
    "matched_counts",
]


class FeatureClassifier(NamedTuple):
    """A trained classifier used as the feature space of FID / IS."""

    model: MLPClassifier
    params: Any
    test_accuracy: float  # on the held-out images given to fit_feature_classifier (nan if none)

    def features(self, images: Any) -> np.ndarray:
        """Penultimate activations ``[N, hidden[-1]]`` (float64 numpy)."""
        out = _apply(self.model, self.params, jnp.asarray(images, jnp.float32), True)
        return np.asarray(out, np.float64)

    def probs(self, images: Any) -> np.ndarray:
        """Class probabilities ``[N, n_labels]`` (float64 numpy)."""
        logits = _apply(self.model, self.params, jnp.asarray(images, jnp.float32), False)
        return np.asarray(jax.nn.softmax(logits), np.float64)


@functools.partial(jax.jit, static_argnums=(0, 3))  # compiled once per model and shape
def _apply(model, params, x, features):
    return model.apply(params, x, features)


def fit_feature_classifier(
    images: Any,
    labels: Any,
    *,
    key: jax.Array,
    n_labels: int = 10,
    hidden: tuple[int, ...] = (128, 64),
    steps: int = 600,
    learning_rate: float = 3e-3,
    weight_decay: float = 1e-3,
    noise: float = 0.1,
    test_images: Any = None,
    test_labels: Any = None,
) -> FeatureClassifier:
    """Train an MLP classifier full-batch with AdamW (one jitted ``lax.scan``).

    Args:
      images: ``[N, ...]`` training images (e.g. ``[N, 8, 8, 1]`` on [-1, 1]).
      labels: ``[N]`` int classes in ``0..n_labels-1`` (whole-number floats accepted).
      key: PRNG key for initialisation and input noise.
      noise: std of Gaussian noise added to the inputs each step (smooths the features so that
        slightly off-manifold generated images are not mapped to outliers).
      test_images, test_labels: optional held-out set for the reported accuracy.
    """
    x = jnp.asarray(images, jnp.float32)
    y_host = _int_labels("fit_feature_classifier", "labels", labels, x.shape[0])
    if x.shape[0] == 0:
        raise ValueError("fit_feature_classifier: no training images")
    if not is_int_at_least(steps, 1):
        raise ValueError(f"fit_feature_classifier: steps must be an integer >= 1, got {steps!r}")
    if (test_images is None) != (test_labels is None):
        raise ValueError("fit_feature_classifier: pass test_images and test_labels together")
    if test_images is not None:
        test_x = jnp.asarray(test_images, jnp.float32)
        test_y = _int_labels("fit_feature_classifier", "test_labels", test_labels, len(test_x))
        if test_x.shape[1:] != x.shape[1:]:
            raise ValueError(
                f"fit_feature_classifier: test_images must have images' shape per row "
                f"{list(x.shape[1:])}, got {list(test_x.shape)}"
            )
    present = set(y_host.tolist())
    outside = sorted(v for v in present if not 0 <= v < n_labels)
    if outside:  # softmax cross-entropy would silently train on them as no class at all
        raise ValueError(f"labels must lie in 0..{n_labels - 1}, got {outside[:5]}")
    missing = sorted(set(range(n_labels)) - present)
    if missing:
        raise ValueError(f"no training images for labels {missing}")
    y = jnp.asarray(y_host, jnp.int32)  # in 0..n_labels-1 (checked on int64 above)
    model = MLPClassifier(n_labels=n_labels, hidden=tuple(hidden))
    k_init, k_train = jax.random.split(key)
    params = model.init(k_init, x[:1])
    opt = optax.adamw(learning_rate, weight_decay=weight_decay)

    def loss_fn(p, k):
        xn = x + noise * jax.random.normal(k, x.shape)
        logits = model.apply(p, xn)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def train(params, key):
        def body(carry, k):
            p, s = carry
            loss, g = jax.value_and_grad(loss_fn)(p, k)
            u, s = opt.update(g, s, p)
            return (optax.apply_updates(p, u), s), loss

        (params, _), losses = jax.lax.scan(
            body, (params, opt.init(params)), jax.random.split(key, steps)
        )
        return params, losses

    params, _ = train(params, k_train)
    acc = float("nan")
    if test_images is not None:
        logits = model.apply(params, test_x)
        acc = float(jnp.mean(jnp.argmax(logits, -1) == test_y))
    return FeatureClassifier(model, params, acc)


def _int_labels(fn: str, name: str, labels: Any, n: int) -> np.ndarray:
    """``labels`` as ``[n]`` int64 class indices, refusing another shape and values that are
    not whole numbers (a float label would otherwise be truncated to a class silently).
    Integers and whole-number floats (e.g. ``2.0``) are accepted; fractional, non-finite,
    bool and non-numeric values are refused. ``fn`` names the caller in the messages."""
    y = np.asarray(labels)
    if y.shape != (n,):
        raise ValueError(
            f"{fn}: {name} must be [{n}] class indices, one per image, got shape {list(y.shape)}"
        )
    whole = y.dtype.kind in "iu" or (
        y.dtype.kind == "f" and bool(np.all(np.isfinite(y) & (y == np.round(y))))
    )
    if not whole:
        raise ValueError(
            f"{fn}: {name} must be integer class indices (whole numbers), got {y.dtype} values"
        )
    return y.astype(np.int64)


def frechet_distance(feats_a: Any, feats_b: Any) -> float:
    """Frechet distance between Gaussians fitted to ``feats_a [n, d]`` and ``feats_b [m, d]``.

    ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` in float64; the matrix square
    root goes through symmetric eigendecompositions, ``tr (S_a S_b)^(1/2) =
    tr (S_a^(1/2) S_b S_a^(1/2))^(1/2)``, so it is real and stable for singular covariances.
    """
    a = np.asarray(feats_a, np.float64)
    b = np.asarray(feats_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need feature matrices [n, d] with equal d; got {a.shape}, {b.shape}")
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError(f"need at least 2 samples per set; got {a.shape[0]} and {b.shape[0]}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("features contain NaN or inf")
    mu_a, mu_b = a.mean(0), b.mean(0)
    # [d, d] even for d = 1 (np.cov returns a 0-d array for one variable)
    s_a, s_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    w, v = np.linalg.eigh(s_a)
    root_a = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    m = root_a @ s_b @ root_a
    tr_sqrt = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0.0, None)))
    fid = np.sum((mu_a - mu_b) ** 2) + np.trace(s_a) + np.trace(s_b) - 2.0 * tr_sqrt
    return float(max(fid, 0.0))


def inception_score(probs: Any, eps: float = 1e-12) -> float:
    """``exp(mean_x KL(p(y|x) || p(y)))`` for class probabilities ``[N, K]``; in [1, K].

    Rows must sum to 1 within 1e-3 (float32 softmax output passes); they are renormalised
    first, so the score stays within [1, K]."""
    p = np.asarray(probs, np.float64)
    if p.ndim != 2 or p.shape[0] == 0:
        raise ValueError(f"probs must be [N, K] with N > 0, got {p.shape}")
    if not np.all(np.isfinite(p)) or np.any(p < 0) or np.any(np.abs(p.sum(1) - 1) > 1e-3):
        raise ValueError("probs must be finite, non-negative rows summing to 1 (NaN? logits?)")
    p = p / p.sum(1, keepdims=True)
    p_y = p.mean(0, keepdims=True)
    kl = np.sum(p * (np.log(p + eps) - np.log(p_y + eps)), axis=1)
    return float(np.exp(kl.mean()))


def matched_counts(*label_sets: Any) -> dict[int, int]:
    """``{label: the smallest count of it among label_sets}`` over labels in all of them:
    the largest per-label composition every set can fill at least once."""
    counts = [
        dict(zip(*np.unique(np.asarray(y), return_counts=True), strict=True)) for y in label_sets
    ]
    common = set.intersection(*(set(c) for c in counts)) if counts else set()
    return {int(lab): int(min(c[lab] for c in counts)) for lab in sorted(common)}


def equal_n_subsets(labels: Any, per_label: Mapping[int, int]) -> list[np.ndarray]:
    """Disjoint index sets into ``labels``, each with ``per_label[l]`` rows of every label
    ``l`` (taken in order), as many as the scarcest label allows (ValueError if none)."""
    labels = np.asarray(labels)
    if not per_label or any(k < 1 for k in per_label.values()):
        raise ValueError(f"per_label needs positive counts, got {dict(per_label)}")
    rows = {lab: np.flatnonzero(labels == lab) for lab in per_label}
    n_sets = min(len(rows[lab]) // k for lab, k in per_label.items())
    if n_sets == 0:
        short = {lab: len(rows[lab]) for lab, k in per_label.items() if len(rows[lab]) < k}
        raise ValueError(f"too few rows for one subset of {dict(per_label)}: {short}")
    return [
        np.concatenate([rows[lab][i * k : (i + 1) * k] for lab, k in per_label.items()])
        for i in range(n_sets)
    ]


def equal_n_fid(
    features: Any, labels: Any, per_label: Mapping[int, int], reference: Any
) -> dict[str, Any]:
    """FID at a fixed sample size: the mean over the disjoint :func:`equal_n_subsets` of
    ``features [N, d]`` (rows labelled ``labels``) of their FID against ``reference``.

    Returns ``{"fid": mean, "fid_std": std over subsets (0 for one), "n": subset size,
    "subsets": count}``. Every subset has the same size, so the mean carries the bias of
    that ``n`` exactly, whatever the number of subsets (which only lowers the variance).
    """
    feats = np.asarray(features, np.float64)
    values = [frechet_distance(feats[idx], reference) for idx in equal_n_subsets(labels, per_label)]
    return {
        "fid": float(np.mean(values)),
        "fid_std": float(np.std(values)),
        "n": int(sum(per_label.values())),
        "subsets": len(values),
    }


def evaluate_samples(
    classifier: FeatureClassifier,
    images: Any,
    labels: Any,
    reference_images: Any,
    reference_labels: Any,
    *,
    per_label_n: Mapping[int, int] | None = None,
) -> dict[str, Any]:
    """FID (vs the reference set), inception score and conditional accuracy, overall and per label.

    Args:
      classifier: the feature space.
      images, labels: generated ``[N, ...]`` images and the labels they were conditioned on.
      reference_images, reference_labels: real images (e.g. the GAN's training set).
        Labels are ``[N]`` class indices, one per image: integers or whole-number floats
        (``2.0``), as :func:`fit_feature_classifier` takes them; fractional ones are refused.
      per_label_n: score ``fid`` at this fixed composition (:func:`equal_n_fid`), to compare
        it with another set scored the same way (e.g. a real held-out floor); ``None``: all
        samples.

    Returns:
      ``{"fid", "inception_score", "accuracy", "n", "per_label": {label: {"fid",
      "inception_score", "accuracy", "n"}}}``; ``accuracy`` is the fraction of samples the
      classifier assigns to the conditioning label. Per-label inception scores are near 1
      for a good conditional model (one class per label); they are reported for completeness.
      With ``per_label_n``: ``fid`` is the equal-``n`` mean, and ``fid_std``, ``fid_n``,
      ``fid_subsets`` and ``fid_all_samples`` (the FID of all ``n`` samples) are added.
    """
    for name, n in (("images", len(images)), ("reference_images", len(reference_images))):
        if n < 2:  # a covariance needs two rows (and an empty batch broke the classifier)
            raise ValueError(f"evaluate_samples: {name} needs at least 2 images, got {n}")
    labels = _int_labels("evaluate_samples", "labels", labels, len(images))
    ref_labels = _int_labels(
        "evaluate_samples", "reference_labels", reference_labels, len(reference_images)
    )
    f_gen, p_gen = classifier.features(images), classifier.probs(images)
    f_ref = classifier.features(reference_images)
    pred = p_gen.argmax(1)
    out: dict[str, Any] = {
        "fid": frechet_distance(f_gen, f_ref),
        "inception_score": inception_score(p_gen),
        "accuracy": float(np.mean(pred == labels)),
        "n": int(labels.size),
        "per_label": {},
    }
    if per_label_n is not None:
        eq = equal_n_fid(f_gen, labels, per_label_n, f_ref)
        out["fid_all_samples"] = out["fid"]
        out["fid"] = eq["fid"]
        out.update(fid_std=eq["fid_std"], fid_n=eq["n"], fid_subsets=eq["subsets"])
    for lab in np.unique(labels):
        g, r = labels == lab, ref_labels == lab
        if r.sum() < 2:
            raise ValueError(f"the reference set has fewer than 2 images of label {lab}")
        out["per_label"][int(lab)] = {  # a covariance needs 2 samples: NaN below that
            "fid": frechet_distance(f_gen[g], f_ref[r]) if g.sum() >= 2 else float("nan"),
            "inception_score": inception_score(p_gen[g]),
            "accuracy": float(np.mean(pred[g] == lab)),
            "n": int(g.sum()),
        }
    return out
