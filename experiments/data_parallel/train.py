"""Train an MLP on digits with :func:`jaxsci.parallel.data_parallel` in the current job.

Every rank builds the same data order (a seeded permutation per epoch); each step takes the
next ``global_batch`` samples and ``shard_batch`` gives this rank its block, which the step
splits over the local devices. So 1 or 2 processes and 1 or 4 devices see the same global
batches and must produce the same loss curve (up to float32 summation order).
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from experiments.data_parallel.config import N_DIGITS, Config
from jaxsci.parallel import ProcessInfo, bootstrap, data_parallel, make_mesh
from jaxsci.train import MLLogger


def load_data(config: Config) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits as ``x [N, 64]`` float32 in [0, 1] and labels ``[N]`` int32: train, test."""
    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int32)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=config.test_fraction, stratify=y, random_state=config.seed
    )
    return x_tr, y_tr, x_te, y_te


def init_mlp(key: jax.Array, widths: tuple[int, ...]) -> list[dict[str, jax.Array]]:
    params = []
    for a, b in zip(widths[:-1], widths[1:], strict=True):
        key, sub = jax.random.split(key)
        params.append({"w": jax.random.normal(sub, (a, b)) * np.sqrt(2.0 / a), "b": jnp.zeros(b)})
    return params


def logits_fn(params: list[dict[str, jax.Array]], x: jax.Array) -> jax.Array:
    h = x
    for i, p in enumerate(params):
        h = h @ p["w"] + p["b"]
        if i < len(params) - 1:
            h = jax.nn.relu(h)
    return h


def loss_fn(params: list[dict[str, jax.Array]], batch: tuple[jax.Array, jax.Array]) -> jax.Array:
    """Mean cross-entropy over the batch."""
    x, y = batch
    return optax.softmax_cross_entropy_with_integer_labels(logits_fn(params, x), y).mean()


def batch_indices(step: int, n: int, global_batch: int, seed: int) -> np.ndarray:
    """Indices of the global batch of ``step``: consecutive blocks of a per-epoch permutation."""
    if not 1 <= global_batch <= n:
        raise ValueError(f"global_batch must lie in [1, {n}] (the samples), got {global_batch}")
    per_epoch = n // global_batch
    epoch, k = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return perm[k * global_batch : (k + 1) * global_batch]


def train_and_evaluate(
    config: Config,
    *,
    info: ProcessInfo | None = None,
    progress: bool = True,
    mllog: MLLogger | None = None,
) -> dict[str, Any]:
    """Train; returns per-step global losses, test accuracies and the run's layout.

    Also ``all_steps_s``: seconds from the run's start to its last step and evaluation (the
    span an aborted run's time to train covers, measured on successful runs too).

    ``mllog`` records the run MLPerf-HPC style (:mod:`jaxsci.train.mllog`). ``init`` (not
    timed): mesh, model, optimizer state, and the step and the evaluation compiled on
    synthetic data of the real shapes. The timed run: loading the data set (``staging``),
    epochs of steps, evaluations, up to the first evaluation at ``config.target_accuracy``
    (``run_stop``, status ``success``; else ``aborted`` after the last step; both log the
    fractional ``epoch_num`` = steps / steps per epoch). Training goes
    on to ``config.steps`` either way (the layouts' curves are compared in full).
    """
    info = info if info is not None else bootstrap()
    log = mllog if mllog is not None else MLLogger(None)
    log.start("init")
    mesh = make_mesh(config.devices)
    n_devices = int(mesh.devices.size)
    log.event("submission_benchmark", "jaxsci_digits_mlp")
    for key, value in (
        ("number_of_nodes", info.size),
        ("accelerators_per_node", n_devices),
        ("global_batch_size", config.global_batch),
        ("opt_name", "adam"),
        ("opt_base_learning_rate", config.lr),
        ("target_accuracy", config.target_accuracy),
        ("seed", config.seed),
    ):
        log.event(key, value)
    dp = data_parallel(
        loss_fn, optax.adam(config.lr), info=info, mesh=mesh, bucket_bytes=config.bucket_bytes
    )
    widths = (64, *config.hidden, 10)  # 8 x 8 pixels in, 10 classes out
    params = init_mlp(jax.random.key(config.seed), widths)
    accuracy = jax.jit(lambda p, x, y: jnp.mean(jnp.argmax(logits_fn(p, x), -1) == y))
    # Compile outside the clock, on synthetic data of the shapes the run will see (MLPerf's
    # warm-up: nothing of the data set is read); step() donates its state, so a throwaway one.
    n_local = config.global_batch // info.size
    synthetic = (np.zeros((n_local, 64), np.float32), np.zeros((n_local,), np.int32))
    warm, _ = dp.step(dp.init(params), synthetic)
    n_test = int(np.ceil(config.test_fraction * N_DIGITS))  # train_test_split's rounding
    accuracy(dp.params(warm), synthetic[0][:1].repeat(n_test, 0), synthetic[1][:1].repeat(n_test))
    state = dp.init(params)
    jax.block_until_ready(state)
    log.stop("init")
    log.start("run")
    t_run = time.perf_counter()
    with log.interval("staging"):
        x_tr, y_tr, x_te, y_te = load_data(config)
    log.event("train_samples", len(x_tr))
    log.event("eval_samples", len(x_te))
    per_epoch = len(x_tr) // config.global_batch
    reached = False

    steps = range(config.steps)
    if progress and info.is_root:
        from tqdm import tqdm

        steps = tqdm(steps, desc=f"{info.size} proc x {n_devices} dev", leave=False)
    losses, evals = [], []
    in_epoch = False  # an epoch_start without its epoch_stop yet
    for step in steps:
        if not reached and not in_epoch:
            log.start("epoch", metadata={"epoch_num": step // per_epoch + 1})
            in_epoch = True
        idx = batch_indices(step, len(x_tr), config.global_batch, config.seed)
        state, loss = dp.step(state, dp.shard_batch((x_tr[idx], y_tr[idx])))
        losses.append(float(loss))
        if in_epoch and (step + 1) % per_epoch == 0:
            log.stop("epoch", metadata={"epoch_num": step // per_epoch + 1})
            in_epoch = False
        if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
            epoch = {"epoch_num": (step + 1) / per_epoch, "step": step + 1}
            with log.interval("eval", metadata=epoch):
                acc = float(accuracy(dp.params(state), x_te, y_te))
                log.event("eval_accuracy", acc, epoch)
            evals.append({"step": step + 1, "test_accuracy": acc})
            if not reached and acc >= config.target_accuracy:
                reached = True
                if in_epoch:  # the target ends the epoch under way
                    log.stop("epoch", metadata={"epoch_num": step // per_epoch + 1})
                    in_epoch = False
                log.stop("run", metadata={"status": "success", **epoch})
    all_steps_s = time.perf_counter() - t_run
    if in_epoch:
        log.stop("epoch", metadata={"epoch_num": (config.steps - 1) // per_epoch + 1})
    if not reached:  # epochs on the success branch's basis: steps / steps per epoch
        log.stop(
            "run",
            metadata={
                "status": "aborted",
                "epoch_num": config.steps / per_epoch,
                "step": config.steps,
            },
        )
    return {
        "processes": info.size,
        "devices_per_process": n_devices,
        "losses": losses,
        "evals": evals,
        "final_test_accuracy": evals[-1]["test_accuracy"],
        "all_steps_s": all_steps_s,
    }
