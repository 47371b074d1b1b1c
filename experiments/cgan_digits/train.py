"""``train_and_evaluate``: per-label and single conditional GANs on digits, at equal compute.

Writes into the run folder: ``metrics.json`` (config, the equal-compute definition, the
metric classifier, reference FIDs and, per model, FID / inception score / conditional
accuracy overall and per label, wall time), ``samples_<model>.npz`` (``images`` N x 8 x 8
on 0..16, ``labels``), ``samples_<model>.png`` (one row per label), ``losses_<model>.png``
and Orbax checkpoints under ``checkpoints/<model>`` (a rerun with the same ``workdir``
resumes from them; ``training_config.json`` holds the settings they were made with, and a
rerun with other training settings is refused once a model holds a complete checkpoint, as
is one asking fewer ``steps`` than a checkpoint of a model to train holds, both before any
training (:func:`check_resume`); ``steps`` may grow to extend training). A rerun that
trains some of the models keeps the others' entries in ``metrics.json``, re-scored from
their ``samples_<model>.npz`` with this invocation's classifier and FID ``n`` (so that
every FID in the file compares with ``reference_fid``; their budget, timing and losses stay
those of the invocation that trained them, and ``rescored_from_samples`` is true). A model
whose samples are missing or too few for that ``n`` (an earlier run with a smaller
``samples_per_label``) is dropped from the file with a warning: retrain it in this workdir
to get it back.

FID at equal sample size: FID is biased upwards by a term shrinking like ``1/n``, so a
model's FID and the real-vs-real floor are computed at the same ``n`` and label mix. The
floor needs real images disjoint from the reference (the training split), so its ``n``
is capped by the held-out split (450 digits at the default 25 %); more generated samples
cannot raise it. Both are therefore scored on subsets with ``min(held-out, generated)``
images of each label (450 at the defaults), averaging the FIDs of disjoint subsets (4
subsets of a model's 2000 generated images, 1 of the held-out set): each subset has the
same ``n``, so the average keeps the bias of that ``n`` and only lowers the variance.
``fid_all_samples`` keeps the FID of all generated samples, not comparable with the floor.

Timing, per model, of the invocation that finished it (after a resume: the remaining steps
only): ``compile_seconds`` is the wall time spent tracing, lowering and compiling JAX
programs during training (the ``jax.monitoring`` compile spans, nested ones counted once);
``train_seconds`` is the rest of the training wall time, i.e. the steps themselves plus the
checkpoint writes after each chunk; ``train_wall_seconds`` is their sum.
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax

from experiments._cli import note_run_folder
from experiments.cgan_digits import plots
from experiments.cgan_digits.config import MODELS, Config
from jaxsci.data.digits import downscale, from_digits_scale, load_digits_split, to_digits_scale
from jaxsci.metrics.fid import (
    equal_n_fid,
    evaluate_samples,
    fit_feature_classifier,
    frechet_distance,
    matched_counts,
)
from jaxsci.models.gan import CGAN, dc_cgan, w_cgan
from jaxsci.parallel.bootstrap import ProcessInfo, bootstrap
from jaxsci.train.checkpoint import Checkpointer
from jaxsci.train.gan import (
    sample_images,
    sample_per_label,
    train_conditional,
    train_per_label,
)
from jaxsci.train.run_dir import make_run_dir, write_metrics

N_LABELS = 10
#: Settings that change what the checkpoints hold; a resume must agree on all of them.
#: Not ``steps`` (a resume may extend training), nor the evaluation / parallelism knobs.
TRAINING_FIELDS = (
    "image_size",
    "batch_size",
    "g_features",
    "d_features",
    "latent_dim",
    "n_critic",
    "gp_weight",
    "lr_wgan",
    "lr_dcgan",
    "baseline_schedule",
    "seed",
    "test_fraction",
)


def _saved_steps(run_dir: Path, name: str) -> dict[Path, int]:
    """``{checkpoint folder: its newest complete step}`` of model ``name`` in ``run_dir``
    (a per-label model: one folder per block of labels trained together); folders with no
    complete step (a run stopped before its first save) are left out. Reads only."""
    root = run_dir / "checkpoints" / name
    if not root.is_dir():
        return {}
    folders = [root]
    if name.startswith("perlabel"):
        folders = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("labels-"))
    single = ProcessInfo(rank=0, size=1, local_device_count=jax.local_device_count())
    steps = {}
    for folder in folders:
        with Checkpointer(folder, keep=None, info=single) as ckpt:
            latest = ckpt.latest_step()
        if latest is not None:
            steps[folder] = latest
    return steps


def check_resume(run_dir: str | Path, config: Config) -> None:
    """``ValueError``, before any work, if ``config`` cannot resume the run in ``run_dir``:

    * a model holds a complete checkpoint or samples (``samples_<model>.npz``, which a
      rerun re-scores into its ``metrics.json``) and ``training_config.json`` records other
      training settings (:data:`TRAINING_FIELDS`; every differing one named): the
      settings file of a run stopped before its first checkpoint binds nothing;
    * a model to train holds a checkpoint past the generator updates ``config.steps`` gives
      it (a run cannot resume to fewer steps: it trained the models before it, then failed).

    Reads only; a missing folder is a fresh start."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return
    saved = {name: _saved_steps(run_dir, name) for name in MODELS}
    path = run_dir / "training_config.json"
    holders = [
        name for name, steps in saved.items() if steps or (run_dir / f"samples_{name}.npz").exists()
    ]
    if holders and path.exists():
        mine = {k: getattr(config, k) for k in TRAINING_FIELDS}
        theirs = json.loads(path.read_text())
        diff = {k: (theirs.get(k), v) for k, v in mine.items() if theirs.get(k) != v}
        if diff:
            raise ValueError(
                f"{run_dir} holds models ({', '.join(holders)}) made with other settings "
                f"(field: (theirs, yours)): {diff}; rerun with theirs or use a fresh workdir"
            )
    for name in config.models:
        n_steps = schedule(config, name.startswith("perlabel"))[1]
        for folder, latest in saved[name].items():
            if latest > n_steps:
                per_step = n_steps // config.steps
                how = (
                    f" ({per_step} x steps: baseline_schedule {config.baseline_schedule})"
                    if per_step > 1
                    else ""
                )
                raise ValueError(
                    f"the checkpoint of {name} in {folder} is at step {latest}, past the "
                    f"{n_steps} generator updates that steps={config.steps} gives it{how}: "
                    f"rerun with --steps >= {-(-latest // per_step)} (more steps extend the "
                    "run), or use a fresh workdir"
                )


def _record_settings(run_dir: Path, config: Config) -> None:
    """Write ``training_config.json``: the training settings the checkpoints are made with
    (after :func:`check_resume` passed: equal to those there, or none is complete)."""
    mine = {k: getattr(config, k) for k in TRAINING_FIELDS}
    (run_dir / "training_config.json").write_text(json.dumps(mine, indent=1))


def build_model(config: Config, family: str) -> tuple[CGAN, optax.GradientTransformation]:
    """The CGAN and its Adam optimizer for ``family`` "wcgan" or "dcgan"."""
    sizes = dict(
        image_size=config.image_size,
        n_labels=N_LABELS,
        latent_dim=config.latent_dim,
        g_features=config.g_features,
        d_features=config.d_features,
    )
    if family == "wcgan":
        cgan = w_cgan(**sizes, n_critic=config.n_critic, gp_weight=config.gp_weight)
        return cgan, optax.adam(config.lr_wgan, b1=0.5, b2=0.9)
    return dc_cgan(**sizes), optax.adam(config.lr_dcgan, b1=0.5, b2=0.999)


def schedule(config: Config, per_label: bool) -> tuple[int, int, int]:
    """``(models, generator updates per model, batch per update)`` of a model family."""
    if per_label:
        return N_LABELS, config.steps, config.batch_size
    if config.baseline_schedule == "more_steps":
        return 1, config.steps * N_LABELS, config.batch_size
    return 1, config.steps, config.batch_size * N_LABELS


def equal_compute(config: Config, cgan: CGAN, per_label: bool) -> dict[str, Any]:
    """Budget actually used by one model family (see the config module's docstring)."""
    models, steps, batch = schedule(config, per_label)
    return {
        "models": models,
        "generator_updates_per_model": steps,
        "critic_updates_per_model": steps * cgan.n_critic,
        "batch_per_update": batch,
        "generator_examples_total": models * steps * batch,
        "critic_examples_total": models * steps * cgan.n_critic * batch,
    }


#: ``jax.monitoring`` events whose time spans are compilation (tracing, lowering, XLA).
COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)


class CompileTimer:
    """Wall time JAX spends compiling while the context is active (seconds).

    Collects the time spans of :data:`COMPILE_EVENTS` and measures their union, so a trace
    nested in another (an inner ``jit`` traced while tracing its caller) counts once.
    """

    def __init__(self) -> None:
        self.spans: list[tuple[float, float]] = []

    def _record(self, event: str, start: float, end: float, **_: Any) -> None:
        if event in COMPILE_EVENTS:
            self.spans.append((start, end))

    def __enter__(self) -> CompileTimer:
        jax.monitoring.register_event_time_span_listener(self._record)
        return self

    def __exit__(self, *exc: object) -> None:
        jax.monitoring.unregister_event_time_span_listener(self._record)

    @property
    def seconds(self) -> float:
        total, reach = 0.0, -np.inf
        for start, end in sorted(self.spans):
            if end > reach:
                total += end - max(start, reach)
                reach = end
        return total


def _train_one(
    name: str,
    config: Config,
    data,
    key: jax.Array,
    ckpt_root: Path,
    info: ProcessInfo,
    progress: bool,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], dict[str, Any], dict[str, float]]:
    """Train model ``name``; returns (images [N, S, S, 1] on [-1, 1], labels, history, budget,
    timing: ``train_seconds``, ``compile_seconds``, ``train_wall_seconds``, see the module
    docstring)."""
    kind, family = name.split("_")
    cgan, opt = build_model(config, family)
    k_train, k_sample = jax.random.split(key)
    with CompileTimer() as compiling:  # the training only, not the sampling after it
        t0 = time.perf_counter()
        if kind == "perlabel":
            result = train_per_label(
                cgan,
                opt,
                opt,
                data.train_images,
                data.train_labels,
                key=k_train,
                label_set=range(N_LABELS),
                n_steps=config.steps,
                batch_size=config.batch_size,
                chunk_steps=config.chunk_steps,
                strategy=config.strategy,
                info=info,
                checkpoint_dir=ckpt_root / name,
                progress=progress,
            )
        else:
            _, steps, batch = schedule(config, per_label=False)
            state, history = train_conditional(
                cgan,
                opt,
                opt,
                data.train_images,
                data.train_labels,
                key=k_train,
                n_steps=steps,
                batch_size=batch,
                chunk_steps=config.chunk_steps,
                checkpoint_dir=ckpt_root / name,
                progress=progress,
            )
        seconds = time.perf_counter() - t0
    timing = {
        "train_seconds": max(seconds - compiling.seconds, 0.0),
        "compile_seconds": compiling.seconds,
        "train_wall_seconds": seconds,
    }
    if kind == "perlabel":
        images, labels = sample_per_label(cgan, result, k_sample, config.samples_per_label)
        history = result.history
    else:
        labels = np.repeat(np.arange(N_LABELS), config.samples_per_label)
        images = np.asarray(sample_images(cgan, state.g_params, k_sample, labels))
    return images, labels, history, equal_compute(config, cgan, kind == "perlabel"), timing


def train_and_evaluate(
    config: Config, workdir: str | Path | None = None, *, progress: bool = True
) -> tuple[Path | None, dict[str, Any]]:
    """Train the configured models, evaluate them and write the run folder.

    Args:
      config: the study's settings.
      workdir: run folder to (re)use; checkpoints in it are resumed. Default: a fresh
        ``<out_root>/cgan_digits-<timestamp>``.
      progress: show progress bars.

    Returns:
      ``(run folder, metrics)``; under MPI only rank 0 writes and returns the folder (other
      ranks return ``(None, {})`` after contributing their labels).
    """
    info = bootstrap() if config.strategy == "mpi" else ProcessInfo(0, 1, jax.local_device_count())
    run_dir, refused = None, None
    if info.is_root:
        run_dir = (
            Path(workdir) if workdir is not None else make_run_dir(config.out_root, "cgan_digits")
        )
        try:
            check_resume(run_dir, config)  # before any training; reads only
        except ValueError as err:
            refused = str(err)
        else:
            run_dir.mkdir(parents=True, exist_ok=True)
            _record_settings(run_dir, config)
    if info.size > 1:  # every rank learns the folder and the verdict (no rank left waiting)
        folder, refused = info.comm.bcast((str(run_dir) if run_dir else None, refused), root=0)
        run_dir = Path(folder)
    if refused is not None:
        raise ValueError(refused)
    note_run_folder(run_dir)  # every rank: the one that reports Ctrl-C names it
    data = load_digits_split(
        image_size=config.image_size, test_fraction=config.test_fraction, seed=config.seed
    )
    data8 = load_digits_split(image_size=8, test_fraction=config.test_fraction, seed=config.seed)
    key = jax.random.PRNGKey(config.seed)
    k_clf, k_models = jax.random.split(key)

    trained = {}
    for name in config.models:
        if info.size > 1 and not (name.startswith("perlabel") or info.is_root):
            continue  # baselines are one model: rank 0 trains them
        trained[name] = _train_one(
            name,
            config,
            data,
            jax.random.fold_in(k_models, MODELS.index(name)),  # not its place in --models
            run_dir / "checkpoints",
            info,
            progress,
        )
    if not info.is_root:
        return None, {}

    t0 = time.perf_counter()
    clf = fit_feature_classifier(
        data8.train_images,
        data8.train_labels,
        key=k_clf,
        n_labels=N_LABELS,
        steps=config.classifier_steps,
        test_images=data8.test_images,
        test_labels=data8.test_labels,
    )
    ref = clf.features(data8.train_images)
    # every model samples samples_per_label images of each label: one composition for all
    generated_labels = np.repeat(np.arange(N_LABELS), config.samples_per_label)
    per_label_n = matched_counts(data8.test_labels, generated_labels)
    floor = equal_n_fid(clf.features(data8.test_images), data8.test_labels, per_label_n, ref)
    n_eq = floor["n"]
    noise = np.random.default_rng(config.seed).uniform(-1, 1, (n_eq, *data8.test_images.shape[1:]))
    metrics: dict[str, Any] = {
        "config": dataclasses.asdict(config),
        "equal_compute": {
            "definition": (
                "same total number of training examples through generator and critic "
                "updates: per-label = 10 models x steps x batch_size; baseline = 1 model x "
                + (
                    "the same steps x (10 * batch_size), i.e. the same number of sequential updates"
                    if config.baseline_schedule == "larger_batch"
                    else "(10 * steps) x batch_size, i.e. the same cost per update"
                )
            ),
            "baseline_schedule": config.baseline_schedule,
        },
        "classifier": {
            "kind": "MLP (128, 64), trained at run time on the training split",
            "test_accuracy": clf.test_accuracy,
            "seconds": time.perf_counter() - t0,
        },
        "reference_fid": {
            "definition": (
                "FID against the training split at n images with per_label_n of each label, "
                "the n every model's fid is scored at (FID is biased by n); mean over "
                "disjoint subsets"
            ),
            "n": n_eq,
            "per_label_n": per_label_n,
            "real_heldout_vs_train": floor["fid"],
            "real_heldout_vs_train_std": floor["fid_std"],
            "real_heldout_subsets": floor["subsets"],
            "uniform_noise_vs_train": frechet_distance(clf.features(noise), ref),
        },
        "process_count": info.size,
        "models": {},
    }
    for name, (images, labels, history, budget, timing) in trained.items():
        images8 = downscale(images, 8)
        result = evaluate_samples(
            clf, images8, labels, data8.train_images, data8.train_labels, per_label_n=per_label_n
        )
        result.update(timing)
        result["final_losses"] = {k: float(np.mean(v[..., -1])) for k, v in history.items()}
        metrics["equal_compute"][name] = budget
        metrics["models"][name] = result
        digits = to_digits_scale(images8[..., 0])
        np.savez_compressed(run_dir / f"samples_{name}.npz", images=digits, labels=labels)
        title = (
            f"{name}: FID {result['fid']:.2f}, IS {result['inception_score']:.2f}, "
            f"acc {result['accuracy']:.3f}"
        )
        plots.sample_grid(digits, labels, run_dir / f"samples_{name}.png", title=title)
        plots.loss_curves(history, run_dir / f"losses_{name}.png", title=name)
    previous = run_dir / "metrics.json"
    if previous.exists():  # models trained by an earlier invocation keep their entries
        old = json.loads(previous.read_text())
        for name, entry in old.get("models", {}).items():
            if name not in MODELS or name in trained:
                continue
            result = _rescore(name, run_dir, clf, data8, per_label_n)
            if result is None:
                continue
            metrics["models"][name] = {**entry, **result, "rescored_from_samples": True}
            if name in old.get("equal_compute", {}):
                metrics["equal_compute"][name] = old["equal_compute"][name]
    write_metrics(run_dir, metrics)
    return run_dir, metrics


#: What :func:`_rescore` replaces in an earlier invocation's entry (the scores); the rest
#: (timing, final losses) stays that invocation's.
SCORE_KEYS = (
    "fid",
    "inception_score",
    "accuracy",
    "n",
    "per_label",
    "fid_all_samples",
    "fid_std",
    "fid_n",
    "fid_subsets",
)


def _rescore(
    name: str, run_dir: Path, clf: Any, data8: Any, per_label_n: dict[int, int]
) -> dict[str, Any] | None:
    """Scores of model ``name`` trained by an earlier invocation, from its saved samples,
    with this invocation's classifier and ``per_label_n``; ``None`` with a warning when they
    cannot be (its entry is then dropped rather than kept beside incomparable FIDs). The
    sample grid is redrawn with the new scores in its title."""
    path = run_dir / f"samples_{name}.npz"
    if not path.exists():
        warnings.warn(
            f"{name}: dropped from metrics.json: trained by an earlier invocation, but "
            f"{path.name} is missing, so it cannot be re-scored with this run's classifier "
            f"and FID n; retrain it in this workdir to get it back",
            stacklevel=3,
        )
        return None
    with np.load(path) as saved:
        digits, labels = saved["images"], saved["labels"]
    images8 = from_digits_scale(digits)[..., None]
    try:
        result = evaluate_samples(
            clf, images8, labels, data8.train_images, data8.train_labels, per_label_n=per_label_n
        )
    except ValueError as err:  # e.g. fewer samples per label than per_label_n
        warnings.warn(
            f"{name}: dropped from metrics.json: its samples from an earlier invocation cannot "
            f"be scored at this run's FID n={sum(per_label_n.values())} ({err}); retrain it "
            f"in this workdir (it resumes from its checkpoint) to get it back",
            stacklevel=3,
        )
        return None
    title = (
        f"{name}: FID {result['fid']:.2f}, IS {result['inception_score']:.2f}, "
        f"acc {result['accuracy']:.3f}"
    )
    plots.sample_grid(digits, labels, run_dir / f"samples_{name}.png", title=title)
    return {k: result[k] for k in SCORE_KEYS if k in result}
