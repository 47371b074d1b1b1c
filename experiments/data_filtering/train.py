"""Training and scoring pieces of the data-filtering experiment (pure functions, factories).

Batches are drawn from a stream of per-epoch permutations of the kept examples (consecutive
blocks of ``batch`` indices, no example dropped at an epoch's end), as global indices into
the full training set: every method's step has the same shapes and compiles once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.data_filtering.config import Config
from jaxsci.data import (
    el2n_scores,
    forgetting_init,
    forgetting_scores,
    forgetting_update,
    grad_norm_scores,
    load_digits_split,
)
from jaxsci.models import MLPClassifier
from jaxsci.train import fit

N_CLASSES = 10


class Data(NamedTuple):
    """Digits on device: images ``[N, 8, 8, 1]`` on [-1, 1], labels ``[N]`` int32."""

    x_train: jax.Array
    y_train: jax.Array
    x_test: jax.Array
    y_test: jax.Array


class TrainState(NamedTuple):
    params: Any
    opt_state: Any


def load_data(config: Config) -> Data:
    """The stratified digits split (split seed 0 for every training seed)."""
    split = load_digits_split(test_fraction=config.test_fraction, seed=0)
    return Data(*(jnp.asarray(a) for a in split))


def batch_stream(kept: np.ndarray, steps: int, batch: int, seed: int) -> np.ndarray:
    """``[steps, batch]`` indices: consecutive blocks of per-epoch permutations of ``kept``."""
    kept = np.asarray(kept)
    n_epochs = -(-steps * batch // len(kept))
    rng = np.random.default_rng(seed)
    stream = np.concatenate([rng.permutation(kept) for _ in range(n_epochs)])
    return stream[: steps * batch].reshape(steps, batch)


def make_model(config: Config) -> MLPClassifier:
    return MLPClassifier(n_labels=N_CLASSES, hidden=tuple(config.hidden))


def make_trainer(model: MLPClassifier, tx: optax.GradientTransformation, data: Data):
    """``(init, segment, accuracy, correct)``: jitted pieces of one training run.

    ``segment(state, idx [k, B]) -> (state, mean loss)`` runs k steps (``lax.scan``);
    ``accuracy(params) -> test accuracy``; ``correct(params) -> [N_train] bool``.
    """

    def loss(params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
        logits = model.apply(params, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def step(state: TrainState, idx: jax.Array) -> tuple[TrainState, jax.Array]:
        value, grads = jax.value_and_grad(loss)(state.params, data.x_train[idx], data.y_train[idx])
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        return TrainState(optax.apply_updates(state.params, updates), opt_state), value

    @jax.jit
    def segment(state: TrainState, idx: jax.Array) -> tuple[TrainState, jax.Array]:
        state, losses = jax.lax.scan(step, state, idx)
        return state, losses.mean()

    @jax.jit
    def accuracy(params: Any) -> jax.Array:
        return jnp.mean(jnp.argmax(model.apply(params, data.x_test), -1) == data.y_test)

    @jax.jit
    def correct(params: Any) -> jax.Array:
        return jnp.argmax(model.apply(params, data.x_train), -1) == data.y_train

    def init(key: jax.Array) -> TrainState:
        params = model.init(key, data.x_train[:1])
        return TrainState(params, tx.init(params))

    return init, segment, accuracy, correct


def _compile(fn: Callable, *args: Any) -> Callable:
    """``fn`` compiled ahead of time for ``args`` (without running it) if it is jitted."""
    return fn.lower(*args).compile() if hasattr(fn, "lower") else fn


def train_run(
    trainer: tuple[Callable, ...], key: jax.Array, stream: np.ndarray, eval_every: int
) -> dict[str, Any]:
    """Train on ``stream [steps, B]``; test accuracy at step 0 and every ``eval_every`` steps.

    Returns ``steps``, ``test_accuracy`` (same length), ``train_loss`` (per segment),
    ``final_test_accuracy`` and ``time_s`` (training and evaluation, compiled beforehand:
    ahead of time, once per distinct segment length, so no step is executed twice).
    """
    init, segment, accuracy, _ = trainer
    steps = stream.shape[0]
    bounds = list(range(0, steps, eval_every)) + [steps]
    state = init(key)
    compiled = {}  # segment length -> executable (at most two: eval_every and the rest)
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        if b - a not in compiled:
            compiled[b - a] = _compile(segment, state, jnp.asarray(stream[a:b]))
    accuracy = _compile(accuracy, state.params)
    t0 = time.perf_counter()
    acc0 = float(accuracy(state.params))

    def epoch_fn(state: TrainState, k: int) -> tuple[TrainState, dict[str, Any]]:
        idx = jnp.asarray(stream[bounds[k] : bounds[k + 1]])
        state, loss = compiled[idx.shape[0]](state, idx)
        return state, {"train_loss": loss, "test_accuracy": accuracy(state.params)}

    result = fit(state, epoch_fn, num_epochs=len(bounds) - 1, progress=False)
    accs = [acc0] + [r["test_accuracy"] for r in result.history]
    return {
        "steps": bounds,
        "test_accuracy": accs,
        "train_loss": [r["train_loss"] for r in result.history],
        "final_test_accuracy": accs[-1],
        "time_s": time.perf_counter() - t0,
    }


def warmup_scores(
    config: Config, trainer: tuple[Callable, ...], model: MLPClassifier, data: Data, seed: int
) -> dict[str, np.ndarray]:
    """``{score: [N_train]}`` from ``config.n_ensemble`` short full-data warm-up runs."""
    init, segment, _, correct = trainer
    n = data.y_train.shape[0]
    members, tracker = [], forgetting_init(n)
    for m in range(config.n_ensemble):
        state = init(jax.random.fold_in(jax.random.key(seed), 1000 + m))
        stream = batch_stream(np.arange(n), config.warmup_steps, config.batch_size, 1000 * seed + m)
        for row in stream:
            state, _ = segment(state, jnp.asarray(row[None]))
            if m == 0:
                tracker = forgetting_update(tracker, correct(state.params))
        members.append(state.params)

    def example_loss(params: Any, xi: jax.Array, yi: jax.Array) -> jax.Array:
        logits = model.apply(params, xi[None])[0]
        return optax.softmax_cross_entropy_with_integer_labels(logits, yi)

    out = {}
    if "el2n" in config.scores:
        out["el2n"] = el2n_scores(
            model.apply, members, data.x_train, data.y_train, N_CLASSES, ensemble=True
        )
    if "forgetting" in config.scores:
        out["forgetting"] = forgetting_scores(tracker)
    if "grand" in config.scores:
        out["grand"] = grad_norm_scores(example_loss, members[0], data.x_train, data.y_train)
    return {k: np.asarray(v) for k, v in out.items()}
