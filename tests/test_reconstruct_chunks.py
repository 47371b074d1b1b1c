"""jaxsci.reconstruct.chunks: a search round run a chunk of starts at a time."""

import jax
import jax.numpy as jnp
import numpy as np
from ase.build import bulk

from jaxsci.reconstruct.chunks import CHUNK_WORK, round_chunk, run_round

N_STARTS, N_ATOMS, STEPS, N_FEATURES = 6, 3, 4, 2


def _one_round(x, best_x, best_loss, best_err, stale, age, fresh, force, key, aux):
    """A stand-in with the round program's signature and output layout (per start)."""
    moved = x + aux["step"] + jax.random.normal(key, x.shape)
    val = jnp.sum(moved**2)
    hist = jnp.arange(STEPS, dtype=jnp.float32) + val
    feats = jnp.full((N_ATOMS, N_FEATURES), val)
    x_next = jnp.where(force, fresh, moved)
    return x_next, moved, val, best_err + 1.0, stale + 1, age + 1, hist, moved, val, feats


ROUND_FN = jax.jit(
    jax.vmap(_one_round, in_axes=(0,) * 9 + (None,), out_axes=(0, 0, 0, 0, 0, 0, 1, 0, 0, 0))
)


def _always(seconds: float) -> bool:
    return True


def _inputs():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(N_STARTS, N_ATOMS, 3)), jnp.float32)
    state = (
        x,
        x + 1.0,
        jnp.arange(N_STARTS, dtype=jnp.float32),
        jnp.zeros((N_STARTS, N_ATOMS), jnp.float32),
        jnp.zeros(N_STARTS, jnp.int32),
        jnp.full(N_STARTS, 3, jnp.int32),
    )
    force = jnp.asarray(np.arange(N_STARTS) % 2 == 0)
    per_start = (x - 1.0, force, jax.random.split(jax.random.key(0), N_STARTS))
    return state, per_start, {"step": jnp.float32(0.5)}


def test_chunks_give_the_one_call_result():
    state, per_start, aux = _inputs()
    whole, ran, t_whole = run_round(ROUND_FN, state, per_start, aux, N_STARTS, _always, np.inf)
    parts, ran2, t_parts = run_round(ROUND_FN, state, per_start, aux, 2, _always, np.inf)
    assert ran.all() and ran2.all()
    assert np.isfinite(t_whole) and np.isfinite(t_parts)
    for a, b in zip(whole, parts, strict=True):
        assert a.shape == b.shape
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_chunks_that_do_not_fit_are_skipped_and_keep_their_state():
    state, per_start, aux = _inputs()
    asked = []

    def fits(seconds):
        asked.append(seconds)
        return len(asked) < 2  # the second chunk runs, the third does not

    whole, _, _ = run_round(ROUND_FN, state, per_start, aux, N_STARTS, _always, np.inf)
    out, ran, chunk_time = run_round(ROUND_FN, state, per_start, aux, 2, fits, 7.0)
    assert ran.tolist() == [True] * 4 + [False] * 2
    assert len(asked) == 2 and asked[0] <= 7.0 and asked[1] <= asked[0]  # shortest so far
    assert chunk_time <= asked[1]
    for i in range(6):  # the state of the skipped starts is what it was
        np.testing.assert_array_equal(np.asarray(out[i])[:4], np.asarray(whole[i])[:4])
        np.testing.assert_array_equal(np.asarray(out[i])[4:], np.asarray(state[i])[4:])
    hist, low_x, low_loss, low_feats = (np.asarray(a) for a in out[6:])
    assert hist.shape == (STEPS, N_STARTS)
    assert np.isfinite(hist[:, :4]).all() and np.isnan(hist[:, 4:]).all()
    assert np.isfinite(low_loss[:4]).all() and np.isinf(low_loss[4:]).all()
    np.testing.assert_array_equal(low_x[4:], np.asarray(state[1])[4:])
    assert low_feats.shape == (N_STARTS, N_ATOMS, N_FEATURES) and not low_feats[4:].any()


def test_round_chunk_splits_only_periodic_rounds_by_their_work():
    assert round_chunk(64, 40, None, 6.0) == 64  # free clusters: one call
    cell8 = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 1, 1)).cell.array
    cell32 = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2)).cell.array
    assert round_chunk(64, 8, cell8, 6.0) == 16  # 8 x 104^2 = 86,528 slot pairs a start
    assert round_chunk(64, 32, cell32, 6.0) == 4  # 346,112 a start
    assert round_chunk(12, 32, cell32, 6.0) == 4  # a divisor of n_starts
    assert round_chunk(7, 32, cell32, 6.0) == 1  # (7 is prime)
    for n_starts in (1, 5, 64):
        c = round_chunk(n_starts, 32, cell32, 6.0)
        assert n_starts % c == 0 and (c == 1 or c * 32 * 104**2 <= CHUNK_WORK)


def test_round_chunk_keeps_whole_rounds_off_the_cpu(monkeypatch):
    cell32 = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2)).cell.array
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert round_chunk(64, 32, cell32, 6.0) == 64
