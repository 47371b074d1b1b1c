"""A small MLP image classifier whose penultimate layer serves as a feature space (FID)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxsci._checks import is_int_at_least

__all__ = ["MLPClassifier"]


class MLPClassifier(nn.Module):
    """``images [B, ...] -> logits [B, n_labels]`` (flattened input, ReLU hidden layers).

    ``model.apply(params, x, features=True)`` returns the last hidden layer ``[B, hidden[-1]]``
    instead of the logits: the feature space of the classifier-based FID.

    Attributes:
      n_labels: number of classes.
      hidden: widths of the hidden layers (ints >= 1; may be empty).
    """

    n_labels: int = 10
    hidden: tuple[int, ...] = (128, 64)

    def __post_init__(self) -> None:  # a tuple even when given a list: the model is hashed
        hidden = tuple(self.hidden)
        if not is_int_at_least(self.n_labels, 1):
            raise ValueError(f"n_labels must be an int >= 1, got {self.n_labels!r}")
        if not all(is_int_at_least(w, 1) for w in hidden):
            raise ValueError(f"hidden widths must be ints >= 1, got {hidden}")
        object.__setattr__(self, "hidden", hidden)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, features: bool = False) -> jax.Array:
        h = jnp.reshape(x, (x.shape[0], -1))
        for width in self.hidden:
            h = nn.relu(nn.Dense(width)(h))
        if features:
            return h
        return nn.Dense(self.n_labels)(h)
