"""jaxsci.data.filtering against NumPy oracles on a tiny linear softmax model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsci.data import (
    el2n_scores,
    forgetting_init,
    forgetting_scores,
    forgetting_update,
    grad_norm_scores,
    n_keep,
    per_example_loss,
    select,
)

N, D, C = 13, 5, 4  # examples, features, classes


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, D)).astype(np.float32)
    y = rng.integers(0, C, size=N).astype(np.int32)
    params = {
        "w": rng.normal(size=(D, C)).astype(np.float32),
        "b": rng.normal(size=C).astype(np.float32),
    }
    return params, x, y


def logits_fn(params, x):
    return x @ params["w"] + params["b"]


def loss_fn(params, xi, yi):
    return -jax.nn.log_softmax(logits_fn(params, xi))[yi]


def _softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def _numpy_loop(params, x, y):
    """Per-example loss, EL2N and analytic gradient norm, one example at a time."""
    w, b = params["w"].astype(np.float64), params["b"].astype(np.float64)
    loss, el2n, gnorm = [], [], []
    for xi, yi in zip(x.astype(np.float64), y, strict=True):
        p = _softmax(xi @ w + b)
        err = p - np.eye(C)[yi]
        loss.append(-np.log(p[yi]))
        el2n.append(np.linalg.norm(err))
        # d loss / d w = outer(x, p - e_y), d loss / d b = p - e_y
        gnorm.append(np.sqrt(np.sum(np.outer(xi, err) ** 2) + np.sum(err**2)))
    return np.array(loss), np.array(el2n), np.array(gnorm)


def test_per_example_loss_matches_numpy_loop(problem):
    params, x, y = problem
    got = jax.jit(per_example_loss, static_argnums=0)(loss_fn, params, x, y)
    assert got.shape == (N,)
    np.testing.assert_allclose(got, _numpy_loop(params, x, y)[0], rtol=1e-5, atol=1e-6)


def test_el2n_matches_numpy_loop_and_averages_an_ensemble(problem):
    params, x, y = problem
    want = _numpy_loop(params, x, y)[1]
    got = el2n_scores(logits_fn, params, x, y, C)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    other = jax.tree.map(lambda a: -0.5 * a, params)
    want2 = _numpy_loop(other, x, y)[1]
    got2 = el2n_scores(logits_fn, [params, other], x, y, C, ensemble=True)
    np.testing.assert_allclose(got2, (want + want2) / 2, rtol=1e-5, atol=1e-6)
    assert np.all((got >= 0) & (got <= np.sqrt(2) + 1e-6))  # ||p - e_y|| <= sqrt(2)


@pytest.mark.parametrize("chunk_size", [1, 4, 13, 100])
def test_grad_norm_matches_the_analytic_gradient(problem, chunk_size):
    params, x, y = problem
    got = grad_norm_scores(loss_fn, params, x, y, chunk_size=chunk_size)
    assert got.shape == (N,)
    np.testing.assert_allclose(got, _numpy_loop(params, x, y)[2], rtol=1e-4, atol=1e-5)


def test_grad_norm_jits_and_vmaps_over_params(problem):
    params, x, y = problem
    f = jax.jit(lambda p: grad_norm_scores(loss_fn, p, x, y, chunk_size=5))
    np.testing.assert_allclose(f(params), _numpy_loop(params, x, y)[2], rtol=1e-4, atol=1e-5)
    stacked = jax.tree.map(lambda a: jnp.stack([a, 2 * a]), params)
    both = jax.vmap(f)(stacked)
    double = jax.tree.map(lambda a: 2 * a, params)
    np.testing.assert_allclose(both[1], _numpy_loop(double, x, y)[2], rtol=1e-4, atol=1e-5)


def test_forgetting_counts_a_hand_written_sequence():
    # rows: updates; columns: 4 examples
    seq = np.array(
        [
            [0, 1, 1, 0],
            [1, 0, 1, 0],  # ex1 forgets
            [0, 1, 1, 0],  # ex0 forgets
            [1, 0, 1, 0],  # ex1 forgets
            [1, 1, 0, 0],  # ex2 forgets
        ],
        bool,
    )
    state = forgetting_init(4)
    update = jax.jit(forgetting_update)
    for row in seq:
        state = update(state, row)
    np.testing.assert_array_equal(state.forgets, [1, 2, 1, 0])
    np.testing.assert_array_equal(state.learned, [True, True, True, False])
    assert int(state.n_updates) == 5
    # never learned: T // 2 + 1 = 3, above every possible count after 5 updates
    np.testing.assert_array_equal(forgetting_scores(state), [1.0, 2.0, 1.0, 3.0])


def test_forgetting_rejects_a_wrong_shape():
    with pytest.raises(ValueError, match="shape"):
        forgetting_update(forgetting_init(3), np.ones(4, bool))
    with pytest.raises(ValueError):
        forgetting_init(-1)


@pytest.mark.parametrize(
    ("n", "frac", "want"),
    [(10, 0.75, 8), (10, 0.7, 7), (10, 0.35, 4), (10, 0.25, 3), (3, 0.1, 1), (7, 1.0, 7)],
)
def test_n_keep_rounds_half_up_and_keeps_at_least_one(n, frac, want):
    assert n_keep(n, frac) == want
    assert len(select(np.arange(n, dtype=float), frac)) == want


def test_select_drops_the_right_examples():
    scores = np.array([0.5, 0.1, 0.9, 0.3, 0.7, 0.2])
    np.testing.assert_array_equal(select(scores, 0.5, drop="easiest"), [0, 2, 4])
    np.testing.assert_array_equal(select(scores, 0.5, drop="hardest"), [1, 3, 5])
    # ties: of equal scores the lower index goes first, in both directions
    tied = np.array([1.0, 1.0, 1.0, 0.0])
    np.testing.assert_array_equal(select(tied, 0.5, drop="easiest"), [1, 2])
    np.testing.assert_array_equal(select(tied, 0.5, drop="hardest"), [2, 3])
    np.testing.assert_array_equal(select(np.array([np.inf, 0.0, -np.inf]), 1 / 3), [0])


def test_select_is_permutation_consistent():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=50)
    perm = rng.permutation(50)
    for drop in ("easiest", "hardest"):
        base = select(scores, 0.7, drop=drop)
        permuted = select(scores[perm], 0.7, drop=drop)
        np.testing.assert_array_equal(np.sort(perm[permuted]), base)


def test_select_random_is_seeded_and_sized():
    key = jax.random.key(3)
    a = select(np.zeros(40), 0.8, drop="random", key=key)
    np.testing.assert_array_equal(a, select(np.zeros(40), 0.8, drop="random", key=key))
    assert len(a) == 32 and len(np.unique(a)) == 32 and np.all(np.diff(a) > 0)
    b = select(np.zeros(40), 0.8, drop="random", key=jax.random.key(4))
    assert not np.array_equal(a, b)


@pytest.mark.parametrize(
    ("scores", "kwargs", "match"),
    [
        (np.ones(5), {"keep_fraction": 0.0}, "keep_fraction"),
        (np.ones(5), {"keep_fraction": 1.5}, "keep_fraction"),
        (np.ones(5), {"keep_fraction": float("nan")}, "keep_fraction"),
        (np.ones(5), {"keep_fraction": True}, "keep_fraction"),
        (np.array([0.0, np.nan, 1.0]), {"keep_fraction": 0.5}, "NaN"),
        (np.ones((2, 3)), {"keep_fraction": 0.5}, r"\[n\]"),
        (np.ones(0), {"keep_fraction": 0.5}, "at least one"),
        (np.ones(5), {"keep_fraction": 0.5, "drop": "middle"}, "drop"),
        (np.ones(5), {"keep_fraction": 0.5, "drop": "random"}, "key"),
    ],
)
def test_select_rejects_bad_input(scores, kwargs, match):
    with pytest.raises(ValueError, match=match):
        select(scores, **kwargs)


def test_scores_reject_bad_shapes(problem):
    params, x, y = problem
    with pytest.raises(ValueError, match="examples"):
        per_example_loss(loss_fn, params, x, y[:-1])
    with pytest.raises(ValueError, match="examples"):
        el2n_scores(logits_fn, params, x[:-1], y, C)
    with pytest.raises(ValueError, match=r"\[13, 3\]"):  # labels in range, logits [13, 4]
        el2n_scores(logits_fn, params, x, np.minimum(y, 2), 3)
    with pytest.raises(ValueError, match="n_classes"):
        el2n_scores(logits_fn, params, x, y, 0)
    with pytest.raises(ValueError, match="integer labels"):
        el2n_scores(logits_fn, params, x, y.astype(np.float32), C)
    with pytest.raises(ValueError, match="chunk_size"):
        grad_norm_scores(loss_fn, params, x, y, chunk_size=0)
    with pytest.raises(ValueError, match="scalar"):
        per_example_loss(lambda p, xi, yi: logits_fn(p, xi), params, x, y)


def test_forgetting_counts_an_example_learned_only_at_the_last_update():
    # ex0 is correct only at the last update: learned (score 0), not never-learned (score 2)
    state = forgetting_init(3)
    for row in ([0, 1, 0], [0, 0, 0], [0, 1, 0], [1, 0, 0]):
        state = forgetting_update(state, np.array(row, bool))
    np.testing.assert_array_equal(state.learned, [True, True, False])
    np.testing.assert_array_equal(state.forgets, [0, 2, 0])
    np.testing.assert_array_equal(forgetting_scores(state), [0.0, 2.0, 3.0])


def test_forgetting_rejects_a_non_bool_correct():
    with pytest.raises(ValueError, match="bool"):  # a probability is no correctness flag
        forgetting_update(forgetting_init(3), jnp.array([0.2, 0.0, 0.9]))
    with pytest.raises(ValueError, match="bool"):
        forgetting_update(forgetting_init(3), np.array([1, 0, 1]))


def test_select_with_a_key_breaks_ties_at_random_and_only_ties():
    # 30 tied at 0 (unforgettable), 10 distinct scores above; keeping 20 drops 20 of the ties
    rng = np.random.default_rng(5)
    scores = np.concatenate([np.zeros(30), 1.0 + rng.permutation(10)])[rng.permutation(40)]
    tied, above = np.flatnonzero(scores == 0), np.flatnonzero(scores > 0)
    kept = [select(scores, 0.5, key=jax.random.key(k)) for k in range(4)]
    for keep in kept:
        assert len(keep) == 20 and np.all(np.diff(keep) > 0)
        assert set(above) <= set(keep)  # every non-tied example above the cut stays
        assert len(set(keep) & set(tied)) == 10
    assert len({tuple(k) for k in kept}) == 4  # different keys, different tied examples
    np.testing.assert_array_equal(kept[0], select(scores, 0.5, key=jax.random.key(0)))
    # without a key: unchanged, the lowest indices among the ties go first
    np.testing.assert_array_equal(select(scores, 0.5), np.sort(np.concatenate([above, tied[20:]])))
    # one key, nested kept sets across fractions; "hardest" breaks its ties at random too
    key = jax.random.key(9)
    assert set(select(scores, 0.3, key=key)) <= set(select(scores, 0.5, key=key))
    hard = select(-scores, 0.5, drop="hardest", key=key)
    assert set(above) <= set(hard) and len(hard) == 20
    assert not np.array_equal(hard, select(-scores, 0.5, drop="hardest"))
    # distinct scores: the key changes nothing
    distinct = rng.normal(size=40)
    np.testing.assert_array_equal(select(distinct, 0.6, key=key), select(distinct, 0.6))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32, jnp.int8])
def test_select_accepts_any_real_dtype(dtype):
    scores = jnp.asarray([3, 0, 4, 1, 2], dtype)
    np.testing.assert_array_equal(select(scores, 0.6), [0, 2, 4])


@pytest.mark.parametrize("scores", [np.array([True, False]), np.array([1 + 1j, 2.0])])
def test_select_rejects_non_real_scores(scores):
    with pytest.raises(ValueError, match="real numbers"):
        select(scores, 0.5)


def test_el2n_rejects_labels_outside_the_classes_and_a_bare_pytree_ensemble(problem):
    params, x, y = problem
    for bad in (C, -1):
        with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
            el2n_scores(logits_fn, params, x, _with(y, 3, bad), C)
    with pytest.raises(ValueError, match="list or tuple"):
        el2n_scores(logits_fn, params, x, y, C, ensemble=True)
    # traced labels cannot be checked; in-range ones still work under jit
    got = jax.jit(lambda yy: el2n_scores(logits_fn, params, x, yy, C))(y)
    np.testing.assert_allclose(got, _numpy_loop(params, x, y)[1], rtol=1e-5, atol=1e-6)


def _with(a: np.ndarray, i: int, value: int) -> np.ndarray:
    out = a.copy()
    out[i] = value
    return out


def test_el2n_names_the_dtype_of_float_labels(problem):
    """Float labels said "y must be [n] integer labels, got (13,)": the right shape, not the
    dtype that was wrong."""
    params, x, y = problem
    with pytest.raises(ValueError, match="integer labels, got dtype float32"):
        el2n_scores(logits_fn, params, x, y.astype(np.float32), C)
    with pytest.raises(ValueError, match=r"got shape \(13, 1\)"):
        el2n_scores(logits_fn, params, x, y[:, None], C)


@pytest.mark.parametrize("n", [2.5, 3.0, True, "3", 0, -1])
def test_n_keep_refuses_a_non_integer_count(n):
    """n_keep(2.5, 0.5) returned 1."""
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        n_keep(n, 0.5)
    assert n_keep(np.int64(10), 0.75) == 8 and type(n_keep(np.int64(10), 0.75)) is int


def test_select_takes_the_key_forms_batches_takes():
    """select(key=0) was a JAX TypeError ("invalid PRNG key data") while batches took int
    seeds: both now go through jaxsci._keys.as_key."""
    scores = np.array([3.0, 1.0, 1.0, 1.0, 5.0, 1.0])  # ties: the key decides which go
    for drop in ("easiest", "random"):
        want = select(scores, 0.5, drop=drop, key=jax.random.key(7))
        for key in (7, np.int64(7), np.array(7), jnp.int32(7), jax.random.PRNGKey(7)):
            np.testing.assert_array_equal(select(scores, 0.5, drop=drop, key=key), want)
    for bad, match in [
        (-1, r"select: an int seed must be in \[0, 2\*\*"),
        (2**64, r"select: an int seed must be in \[0, 2\*\*"),
        (True, "select: key must be a PRNG key, an int seed"),
        (1.5, "select: key must be a PRNG key, an int seed"),
    ]:
        with pytest.raises(ValueError, match=match):
            select(scores, 0.5, drop="random", key=bad)


def test_scores_take_labels_as_a_list(problem):
    """el2n_scores(..., y=[0, 1, ...]) failed with jnp.result_type's "Cannot determine
    dtype"; array-likes are taken as arrays (per_example_loss / grad_norm_scores alike)."""
    params, x, y = problem
    want = _numpy_loop(params, x, y)
    labels = [int(v) for v in y]
    np.testing.assert_allclose(
        el2n_scores(logits_fn, params, x, labels, C), want[1], rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        per_example_loss(loss_fn, params, x, labels), want[0], rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        grad_norm_scores(loss_fn, params, x.tolist(), labels, chunk_size=4),
        want[2],
        rtol=1e-4,
        atol=1e-5,
    )
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        el2n_scores(logits_fn, params, x, [*labels[:-1], C], C)
