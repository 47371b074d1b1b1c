"""The two histories of :func:`jaxsci.optim.scale_by_anderson` (module doc of
:mod:`jaxsci.optim.anderson`): how a new secant pair enters the ``m``-row ring buffers.

Each factory returns ``insert(state, s, y, u, pair_ok, g0, mix)`` (a pure function of the
state and this step's pair ``s``, ``y``, inner update ``u``, ``g0 = gram([y, u])`` and the
mixing ``mix``), which returns ``(s_row, y_row, s_old, y_old, keep, gram, valid, head, comb,
yu_new, yu_old)``: the rows to write, the old head rows (``None`` where the head slot is
emptied instead), whether the pair is stored, the bookkeeping after it, the combination
``comb = sum_i gamma_i (S_i + mix Y_i)`` over the updated history, and ``<Y_i, u>`` for the
updated (``yu_new``) and old (``yu_old``) rows.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxsci.optim import _tree

Insert = Callable[..., tuple]


def orthogonal(m: int, regularization: float) -> Insert:
    """The orthogonalised history (``history="orthogonal"``); empties the head slot when
    no pair is stored."""
    shrink = 1.0 / (1.0 + regularization)

    def insert(state, s, y, u, pair_ok, g0, mix):
        """Orthogonalise (s, y) against the history.

        Returns the rows to store, whether they are stored, the new bookkeeping and
        ``comb = sum_i gamma_i (S_i + beta Y_i)`` (``beta = mix``, this step's mixing)
        over the *updated* history, computed from the old history (so the ring buffer
        is only read before its one-row write, which XLA then does in place): one pass of
        inner products over ``Y`` and one pass over ``Y`` and ``S`` producing both
        coefficient vectors' combinations at once. The new pair always takes the head slot
        (emptied when the pair is not stored), so the old head row is never read out
        (measured at 1M parameters on CPU: update 6.8-6.85 -> 6.05-6.2 ms for m = 5).
        """
        valid, head = state.valid, state.head
        # <Y_i, y> = <Y_i, u> - <Y_i, u_prev>, the latter kept from the previous step: one
        # pass over Y (a matrix-vector product per leaf) instead of two.
        cu = _tree.hist_dot(state.y_hist, [u])[:, 0] * valid
        cy = (cu - state.yu_prev) * valid
        slot = jnp.arange(m) == head
        a_keep = jnp.where(slot, 0.0, cu) * shrink  # old rows' gamma (the head row is replaced)
        ny0 = jnp.sqrt(g0[0, 0])
        # With Y orthonormal and cy = Y^T y: ||y1||^2 = ||y||^2 - ||cy||^2 and
        # <y1, u> = <y, u> - <cy, Y^T u>, from scalars already at hand (no pass over y1).
        # Accurate while ||y1|| >= 0.7 ||y||; below, the second pass computes them exactly.
        # (Clipped at 0: a cancellation below zero means y lies in the span; second pass.)
        ny1_sq = jnp.maximum(g0[0, 0] - jnp.sum(cy * cy), 0.0)
        y1yu = jnp.stack([ny1_sq, g0[0, 1] - jnp.sum(cy * cu)])

        def second_pass(vals):  # "twice is enough" (Kahan-Parlett), only when needed
            # Only coefficients and scalars leave the branch: the rows themselves are
            # formed once, after it, as y - Y c (fused into their consumers). A branch
            # returning rows made y1 and s1 buffers on every step (~0.09x of a 1M step).
            # y is recomputed from u and u_prev (buffers anyway): a branch reading y itself
            # would make y a buffer too.
            c, _ = vals
            yb = jax.tree_util.tree_map(jnp.subtract, u, state.u_prev)
            off_span = lambda c: jax.tree_util.tree_map(  # y - Y c
                jnp.subtract, yb, _tree.hist_combine_many(state.y_hist, c[None, :])[0]
            )
            c = c + _tree.hist_dot(state.y_hist, [off_span(c)])[:, 0] * valid
            y2 = off_span(c)
            return c, _tree.dots(y2, [y2, u])

        need = jnp.sqrt(y1yu[0]) < 0.7 * ny0
        if _tree.explicit_mesh():  # a select of both (batched cond: see explicit_mesh)
            twice = second_pass((cy, y1yu))
            cy, y1yu = jnp.where(need, twice[0], cy), jnp.where(need, twice[1], y1yu)
        else:
            cy, y1yu = jax.lax.cond(need, second_pass, lambda v: v, (cy, y1yu))
        ny = _tree.safe_sqrt(y1yu[0])  # 0 at 0 with a finite derivative (jax.grad)
        eps = jnp.finfo(jax.tree_util.tree_leaves(y)[0].dtype).eps
        keep = (ny > jnp.sqrt(eps) * ny0) & (ny > 0) & jnp.isfinite(ny)
        inv = jnp.where(keep, 1.0 / jnp.where(keep, ny, 1.0), 0.0)
        new_valid = jnp.where(keep, valid | slot, valid & ~slot)
        g_head = y1yu[1] * inv * shrink  # <yn, u>
        # comb = (S + beta Y) a_keep + g_head (sn + beta yn), sn = (s - S cy) inv (and yn):
        # (S + beta Y) (a_keep - g_head inv cy) + g_head inv (s + beta y) needs the
        # combinations with cy only for the rows written, not in comb.
        gi = g_head * inv
        coefs = jnp.stack([cy, a_keep - gi * cy])
        y_cy, y_a = _tree.hist_combine_many(state.y_hist, coefs)
        s_cy, s_a = _tree.hist_combine_many(state.s_hist, coefs)
        yn = _tree.lin(lambda a, c: (a - c) * inv, y, y_cy)
        sn = _tree.lin(lambda a, c: (a - c) * inv, s, s_cy)

        def comb_leaf(sa, ya, s_, y_):
            b = jnp.asarray(mix, sa.dtype)
            new = jnp.where(keep, gi.astype(sa.dtype) * (s_ + b * y_), 0.0)
            return jnp.where(pair_ok, sa + b * ya + new, 0.0)

        comb = _tree.lin(comb_leaf, s_a, y_a, s, y)
        new_head = jnp.where(keep, (head + 1) % m, head)
        yu = jnp.where(slot & keep, y1yu[1] * inv, cu)  # <Y_i, u> over the updated rows
        return sn, yn, None, None, keep, state.gram, new_valid, new_head, comb, yu, cu

    return insert


def window(m: int, regularization: float) -> Insert:
    """Textbook windowed history (``history="window"``); writes the old head row back when
    no pair is stored."""

    def insert(state, s, y, u, pair_ok, g0, mix):
        """Textbook windowed history with an incrementally updated Gram matrix."""
        dt = _tree.acc_dtype()
        head = state.head
        c = _tree.hist_dot(state.y_hist, [y, u])
        yy, yu = g0[0, 0], g0[0, 1]
        slot = jnp.arange(m) == head
        valid = state.valid | slot
        row = jnp.where(slot, yy, c[:, 0]) * valid
        gram = state.gram.at[head, :].set(row).at[:, head].set(row)
        rhs = jnp.where(slot, yu, c[:, 1]) * valid
        # a row of y = 0 (no residual change) solves as an empty one: gamma_i = <y_i, u> = 0
        # either way, but with every row 0 the ridge is 0 and the matrix singular (NaN
        # derivatives under jax.grad)
        valid = valid & (jnp.diag(gram) > 0)
        rhs = rhs * valid
        g = jnp.where(valid[:, None] & valid[None, :], gram, 0.0)
        lam = regularization * jnp.sum(jnp.diag(g)) / jnp.maximum(jnp.sum(valid), 1)
        eye = jnp.eye(m, dtype=dt)
        a = g + lam * eye * valid[:, None] + eye * (~valid)[:, None]
        gamma = (jnp.linalg.solve(a, rhs) * valid).astype(dt)
        # sum_i gamma_i (S_i + beta Y_i) over the updated history, read from the old one.
        coefs = jnp.stack([jnp.where(slot, 0.0, gamma), slot.astype(gamma.dtype)])
        s_a, s_old = _tree.hist_combine_many(state.s_hist, coefs)
        y_a, y_old = _tree.hist_combine_many(state.y_hist, coefs)
        g_head = gamma[head]

        def comb_leaf(sa, ya, s_, y_):
            b = jnp.asarray(mix, sa.dtype)
            full = sa + b * ya + g_head.astype(sa.dtype) * (s_ + b * y_)
            return jnp.where(pair_ok, full, 0.0)

        comb = _tree.lin(comb_leaf, s_a, y_a, s, y)
        zero = jnp.zeros((m,), dt)  # <Y_i, u_prev> is not used by this mode
        return s, y, s_old, y_old, jnp.asarray(True), gram, valid, (head + 1) % m, comb, zero, zero

    return insert
