"""Mixed precision: a dtype policy and dynamic loss scaling.

A :class:`Policy` keeps parameters (and the optimizer) in ``param_dtype`` (float32), runs the
loss function in ``compute_dtype`` (bfloat16 or float16) and returns its output in
``output_dtype``. float16 has a narrow range, so small gradients underflow: multiply the loss by
a scale ``S`` before differentiating and divide the gradients by ``S`` afterwards.
:class:`DynamicLossScale` picks ``S``: halve it and skip the update when a gradient is not
finite, double it after ``period`` finite steps in a row; ``LossScaleState.skipped`` counts the
skipped steps. In data-parallel training the finite check runs on the all-reduced gradients
and on the update made from them (new parameters and optimizer state), so every rank skips the
same steps. Keep the parameters in float32 (or bfloat16): in float16 the optimizer's small
constants underflow (Adam's ``eps=1e-8`` is 0), and such updates are then skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# one definition, shared with Anderson acceleration: True if every element of every leaf is
# finite (non-floating leaves always are); re-exported as ``jaxsci.parallel.all_finite``
from jaxsci.optim._tree import all_finite

__all__ = ["DynamicLossScale", "LossScaleState", "Policy", "all_finite", "get_policy"]

_ALIASES = {
    "f32": "float32",
    "fp32": "float32",
    "float32": "float32",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "f16": "float16",
    "fp16": "float16",
    "half": "float16",
    "float16": "float16",
}


def _dtype(name: str) -> np.dtype:
    key = name.strip().lower()
    if key not in _ALIASES:
        raise ValueError(f"unknown dtype {name!r}; use one of {sorted(set(_ALIASES))}")
    return np.dtype(jnp.dtype(_ALIASES[key]))


def _cast_floats(tree: Any, dtype: np.dtype | None) -> Any:
    if dtype is None:
        return tree

    def cast(x: Any) -> Any:
        if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating) and x.dtype != dtype:
            return jnp.asarray(x).astype(dtype)
        return x

    return jax.tree.map(cast, tree)


@dataclass(frozen=True)
class Policy:
    """Dtypes for parameters, computation and outputs; ``None`` keeps a leaf's own dtype.

    Only floating leaves are cast. ``Policy()`` changes nothing; ``get_policy("bf16")`` keeps
    float32 parameters and outputs and computes in bfloat16.
    """

    param_dtype: np.dtype | None = None
    compute_dtype: np.dtype | None = None
    output_dtype: np.dtype | None = None

    def cast_to_param(self, tree: Any) -> Any:
        return _cast_floats(tree, self.param_dtype)

    def cast_to_compute(self, tree: Any) -> Any:
        return _cast_floats(tree, self.compute_dtype)

    def cast_to_output(self, tree: Any) -> Any:
        return _cast_floats(tree, self.output_dtype)


def get_policy(spec: str) -> Policy:
    """Policy from a string: ``"float32"``, ``"bf16"`` / ``"fp16"`` (float32 params and outputs,
    16-bit compute), or ``"params=float32,compute=bfloat16,output=float32"``."""
    if "=" not in spec:
        f32 = np.dtype(np.float32)
        return Policy(param_dtype=f32, compute_dtype=_dtype(spec), output_dtype=f32)
    fields = {}
    for part in spec.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in ("params", "compute", "output"):
            raise ValueError(
                f"bad policy field {part!r} in {spec!r}: use params=, compute=, output="
            )
        fields[key] = _dtype(value)
    return Policy(
        param_dtype=fields.get("params", np.dtype(np.float32)),
        compute_dtype=fields.get("compute", np.dtype(np.float32)),
        output_dtype=fields.get("output", np.dtype(np.float32)),
    )


_F32_MAX = float(np.finfo(np.float32).max)


class LossScaleState(NamedTuple):
    """Dynamic loss-scale state (a pytree of scalars).

    Attributes:
      scale: current scale (float32).
      good_steps: finite steps since the scale last changed (int32).
      skipped: steps skipped so far because a gradient, the loss or the update was not
        finite (int32 total): the visible trace of a skip, also at ``min_scale`` where the
        scale stays put.
    """

    scale: jax.Array
    good_steps: jax.Array
    skipped: jax.Array


@dataclass(frozen=True)
class DynamicLossScale:
    """Dynamic loss scaling (as in NVIDIA Apex / jmp).

    Attributes:
      initial: starting scale (2**15).
      factor: multiply/divide the scale by this (2).
      period: finite steps in a row before growing the scale (2000).
      min_scale: the scale never drops below this (1).
    """

    initial: float = 2.0**15
    factor: float = 2.0
    period: int = 2000
    min_scale: float = 1.0

    def __post_init__(self) -> None:
        ok = 0 < self.min_scale <= self.initial <= _F32_MAX and 1 < self.factor <= _F32_MAX
        if not (ok and isinstance(self.period, int | np.integer) and self.period >= 1):
            raise ValueError(
                "DynamicLossScale needs 0 < min_scale <= initial <= float32 max, factor > 1 "
                f"and an integer period >= 1; got initial={self.initial}, "
                f"min_scale={self.min_scale}, factor={self.factor}, period={self.period}"
            )

    def init(self) -> LossScaleState:
        return LossScaleState(jnp.float32(self.initial), jnp.int32(0), jnp.int32(0))

    def adjust(self, state: LossScaleState, finite: jax.Array) -> LossScaleState:
        """Next state after a step whose reduced gradients (and update) were ``finite``
        (bool scalar)."""
        grow = finite & (state.good_steps + 1 >= self.period)
        scale = jnp.where(
            finite,
            # never to inf (then inf / factor = inf: no overflow could bring it back)
            jnp.where(grow, jnp.minimum(state.scale * self.factor, _F32_MAX), state.scale),
            jnp.maximum(state.scale / self.factor, self.min_scale),
        )
        good = jnp.where(finite & ~grow, state.good_steps + 1, 0)
        skipped = state.skipped + jnp.where(finite, 0, 1)
        return LossScaleState(
            scale.astype(jnp.float32), good.astype(jnp.int32), skipped.astype(jnp.int32)
        )
