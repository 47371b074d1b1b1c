"""Validation of :func:`jaxsci.optim.anderson`'s options and of the pytrees it is passed."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxsci.optim import _tree

PyTree = Any


def python_scalars(**options: object) -> dict:
    """The options, a concrete 0-d NumPy / JAX array as the Python scalar it holds
    (what ``optax.inject_hyperparams`` passes); other values unchanged. The options shape
    the program (buffer sizes, branches), so a traced one cannot be used: ``ValueError``
    naming every traced option at once."""
    traced = [name for name, v in options.items() if isinstance(v, jax.core.Tracer)]
    if traced:
        raise ValueError(
            f"anderson: options {traced} are traced arrays, but every option must be a Python "
            "number: the options set the program's shapes and branches. To schedule the "
            "inner optimizer, wrap it instead: anderson(optax.inject_hyperparams(optax.sgd)"
            "(learning_rate=...)); around anderson, optax.inject_hyperparams needs them all "
            f"in static_args={tuple(traced)!r}"
        )
    scalar = lambda v: (  # noqa: E731
        np.asarray(v).item()
        if isinstance(v, jax.Array | np.ndarray | np.generic) and np.ndim(v) == 0
        else v
    )
    return {name: scalar(v) for name, v in options.items()}


def check_args(
    memory: int,
    regularization: float,
    beta: float | str,
    beta_max: float,
    frequency: int,
    warmup: int,
    safeguard: bool,
    safeguard_memory: int,
    average: bool,
    average_window: int,
    average_threshold: float | None,
    history: str,
    max_backoff: int,
    loss_margin: float,
    stretch: bool,
    noise_test: bool,
) -> None:
    def bad(name: str, value: object, need: str) -> ValueError:
        return ValueError(f"anderson: {name} must be {need}, got {value!r}")

    def integer(name: str, value: object, low: int) -> None:
        ok = isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)
        if not ok or value < low:
            raise bad(name, value, f"an integer >= {low}")

    def number(name: str, value: object, need: str, test) -> None:
        ok = isinstance(value, int | float | np.integer | np.floating) and not isinstance(
            value, bool | np.bool_
        )
        if not ok or not math.isfinite(float(value)) or not test(float(value)):
            raise bad(name, value, need)

    integer("memory", memory, 1)
    number("regularization", regularization, "a finite number >= 0", lambda v: v >= 0)
    if beta != "auto":
        number("beta", beta, "'auto' or a finite number > 0", lambda v: v > 0)
    number("beta_max", beta_max, "a finite number >= 1", lambda v: v >= 1)
    integer("frequency", frequency, 1)
    integer("warmup", warmup, 0)
    flags = (
        ("safeguard", safeguard),
        ("average", average),
        ("stretch", stretch),
        ("noise_test", noise_test),
    )
    for name, flag in flags:
        if not isinstance(flag, bool | np.bool_):
            raise bad(name, flag, "True or False")
    integer("safeguard_memory", safeguard_memory, 1)
    integer("average_window", average_window, 2)
    if average_threshold is not None:
        number(
            "average_threshold", average_threshold, "a finite number > 0 or None", lambda v: v > 0
        )
    if history not in ("orthogonal", "window"):
        raise bad("history", history, "'orthogonal' or 'window'")
    integer("max_backoff", max_backoff, 1)
    number("loss_margin", loss_margin, "a finite number >= 0", lambda v: v >= 0)


def check_tree(name: str, tree: PyTree, ref: PyTree, owner: str = "anderson") -> None:
    """``ValueError`` unless ``tree`` has the structure and leaf shapes of ``ref``."""
    ts, rs = jax.tree_util.tree_structure(tree), jax.tree_util.tree_structure(ref)
    if ts != rs:
        raise ValueError(f"{owner}: {name} pytree structure {ts} does not match params {rs}")
    for a, b in zip(jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(ref), strict=True):
        if jnp.shape(a) != jnp.shape(b):
            raise ValueError(
                f"{owner}: {name} leaf shape {jnp.shape(a)} does not match params {jnp.shape(b)}"
            )


def check_layout(state) -> None:
    """``ValueError`` unless the state's arrays have the layout its static spec records.

    A restore that takes the arrays from a checkpoint and the spec from a target built
    elsewhere can pair them wrongly: ``layout="auto"`` is flat on accelerators and per-leaf
    on CPU, so the same optimizer makes states of two shapes (static shapes only: no cost
    under ``jit``)."""
    spec, x_prev = state.spec, state.x_prev
    if spec.flat:
        n = sum(math.prod(shape) for shape in spec.shapes)
        ok = isinstance(x_prev, jax.Array | np.ndarray) and jnp.shape(x_prev) == (n,)
        want, layout = f"one [{n}] vector", "flat"
    else:
        ok = jax.tree_util.tree_structure(x_prev) == spec.treedef and all(
            jnp.shape(x) == shape
            for x, shape in zip(jax.tree_util.tree_leaves(x_prev), spec.shapes, strict=True)
        )
        want, layout = "leaves shaped like the params", "tree"
    if not ok:
        got = jax.tree_util.tree_map(lambda x: list(jnp.shape(x)), x_prev)
        raise ValueError(
            f"anderson: the state's arrays do not have its {layout} layout (want {want}, "
            f"got x_prev shaped {got!s:.200}): was it restored from a checkpoint of another "
            "layout? layout='auto' is flat on accelerators and per-leaf on CPU; save and "
            "restore with the same explicit layout= ('flat' or 'tree')"
        )


def check_update(state, updates: PyTree, params: PyTree, grad: PyTree, value: Any):
    """Validate the arguments of an Anderson ``update`` against its ``state``; returns
    ``(params, value)`` with Python-number leaves as arrays and the loss as an array.

    ``ValueError`` when ``params`` is missing or differs from what ``init`` saw (structure,
    shapes, dtypes, Explicit shardings), when ``updates`` or ``grad`` do not match it, or
    when ``value`` is not a real scalar.
    """
    if params is None:
        raise ValueError("anderson: update needs params (Anderson mixes iterates)")
    params = _tree.as_arrays(params)
    state.spec.check(params)
    check_layout(state)
    if not state.spec.flat:  # Explicit shardings are types: the state's must be the params'
        leaves = zip(
            jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(state.x_prev), strict=True
        )
        for i, (p, h) in enumerate(leaves):
            if _tree.explicit_spec(p) != _tree.explicit_spec(h):
                raise ValueError(
                    f"anderson: params leaf {i} is sharded {_tree.explicit_spec(p)} but the "
                    f"state was initialised for {_tree.explicit_spec(h)}: init with the "
                    "params as they are sharded (or reshard the state like them)"
                )
    check_tree("updates", updates, params)
    if grad is not None:
        check_tree("grad", grad, params)
    if value is not None:
        value = check_value(value)
    return params, value


def check_value(value: Any) -> jax.Array:
    """The loss ``value`` as a JAX array; ``ValueError`` unless it is a real scalar (not a
    ``(loss, aux)`` tuple, a string, a bool or a complex number)."""
    msg = "anderson: value must be a real scalar loss (the loss at params)"
    if isinstance(value, tuple | list | dict | str | bytes):
        hint = " (pass the loss alone, not (loss, aux))" if isinstance(value, tuple) else ""
        raise ValueError(f"{msg}, got {type(value).__name__} {value!r:.80}{hint}")
    try:
        value = jnp.asarray(value)
    except TypeError as err:  # not an array of a JAX type: an object, a string array
        raise ValueError(f"{msg}, got {type(value).__name__} {value!r:.80}") from err
    if value.shape != () or not (
        jnp.issubdtype(value.dtype, jnp.floating) or jnp.issubdtype(value.dtype, jnp.integer)
    ):
        raise ValueError(f"{msg}, got {value.dtype}{list(value.shape)}")
    return value
