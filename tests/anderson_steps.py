"""The scanned optimisation loop shared by the Anderson tests (a helper, not a test module)."""

import jax
import optax


def descend(tx, f, p0, n, scales=None, with_value=True):
    """``n`` steps of ``tx`` on the loss ``f`` from ``p0`` in one ``lax.scan`` (the gradient
    times ``scales[i]`` at step ``i``; the loss passed as ``value`` unless ``with_value`` is
    false). Returns ``(params, state, losses)``: the final params and state, and the loss at
    each of the ``n`` iterates the steps started from."""

    def body(carry, scale):
        p, s = carry
        v, g = jax.value_and_grad(f)(p)
        g = g if scale is None else g * scale
        u, s = tx.update(g, s, p, value=v) if with_value else tx.update(g, s, p)
        return (optax.apply_updates(p, u), s), v

    (p, s), losses = jax.lax.scan(body, (p0, tx.init(p0)), scales, length=n)
    return p, s, losses
