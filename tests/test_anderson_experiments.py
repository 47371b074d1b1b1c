"""Pieces of the Anderson study that have an independent oracle (cheap, no training)."""

import json
import os

import numpy as np
import pytest

from experiments.anderson.problems import burgers_2d_exact, burgers_cole_hopf
from experiments.anderson.runner import iters_to_target


def test_cole_hopf_solution_satisfies_burgers_by_finite_differences():
    nu = 0.05 / np.pi  # smooth enough for central differences on a modest stencil
    x = np.linspace(-0.8, 0.8, 9)
    t = 0.3
    h, k = 1e-3, 1e-4
    u = burgers_cole_hopf(x, t, nu)
    ux = (burgers_cole_hopf(x + h, t, nu) - burgers_cole_hopf(x - h, t, nu)) / (2 * h)
    uxx = (burgers_cole_hopf(x + h, t, nu) - 2 * u + burgers_cole_hopf(x - h, t, nu)) / h**2
    ut = (burgers_cole_hopf(x, t + k, nu) - burgers_cole_hopf(x, t - k, nu)) / (2 * k)
    residual = ut + u * ux - nu * uxx
    assert np.max(np.abs(residual)) < 1e-4 * np.max(np.abs(ut) + np.abs(u * ux))
    # Initial condition and boundary values.
    np.testing.assert_allclose(burgers_cole_hopf(x, 1e-6, nu), -np.sin(np.pi * x), atol=1e-3)
    np.testing.assert_allclose(burgers_cole_hopf(np.array([-1.0, 1.0]), 0.5, nu), 0.0, atol=1e-8)


def test_cole_hopf_quadrature_converges_for_the_benchmark_viscosity():
    nu = 0.01 / np.pi
    x = np.linspace(-1, 1, 41)
    a = burgers_cole_hopf(x, 0.5, nu, n_quad=100)
    b = burgers_cole_hopf(x, 0.5, nu, n_quad=300)
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert np.all(np.isfinite(a)) and np.max(np.abs(a)) < 1.0


def test_burgers_2d_exact_satisfies_the_pde():
    re = 20.0
    nu = 1 / re
    rng = np.random.default_rng(0)
    x, y, t = rng.uniform(0.1, 0.9, (3, 20))
    h = 1e-4

    def uv(x, y, t):
        return np.stack(burgers_2d_exact(x, y, t, re))

    d = lambda f, i: (
        (
            f(*[a + h * (j == i) for j, a in enumerate((x, y, t))])
            - f(*[a - h * (j == i) for j, a in enumerate((x, y, t))])
        )
        / (2 * h)
    )
    w = uv(x, y, t)
    wx, wy, wt = d(uv, 0), d(uv, 1), d(uv, 2)
    h2 = 1e-3
    lap = sum(
        (
            uv(*[a + h2 * (j == i) for j, a in enumerate((x, y, t))])
            - 2 * w
            + uv(*[a - h2 * (j == i) for j, a in enumerate((x, y, t))])
        )
        / h2**2
        for i in (0, 1)
    )
    res = wt + w[0] * wx + w[1] * wy - nu * lap
    assert np.max(np.abs(res)) < 1e-5


def test_iters_to_target():
    assert iters_to_target([5.0, 3.0, 1.0, 0.5], 1.0) == 2
    assert iters_to_target([5.0, 3.0], 1.0) is None


def _bench_anderson():
    """benchmarks/bench_anderson.py as a module (benchmarks/ is not a package)."""
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "bench_anderson.py")
    spec = importlib.util.spec_from_file_location("bench_anderson", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_bench_retimes_a_study_problem_built_by_the_study(tmp_path, monkeypatch):
    # bench_anderson --time-to-target rebuilds each problem as the study did (sizes, steps,
    # precision): it used to look the name up in problems.py, which has no
    # least_squares_large or mlp_diabetes_fullbatch, and ran everything in float64.
    # The baselines are tuned over one grid point each, the point the full grid picks
    # (Nesterov lr 1/L, momentum 0.95; Adam 0.3 x its base step): 5 runs instead of 15,
    # each ~2 s of 5000 x 500 float64 products.
    from experiments.anderson import run
    from experiments.anderson.runner import tuning_grids

    def picked(prob):
        grids = tuning_grids(prob)
        nes = [m for m in grids["nesterov"] if m.lr == prob.lr_sgd and m.momentum == 0.95]
        adam = [m for m in grids["adam"] if m.lr == pytest.approx(0.3 * prob.lr_adam)]
        assert len(nes) == len(adam) == 1
        return {**{f: g[:1] for f, g in grids.items()}, "nesterov": nes, "adam": adam}

    monkeypatch.setattr(run, "tuning_grids", picked)
    res = run.main(
        [
            "--problems",
            "least_squares_large",
            "--scale",
            "0.15",
            "--seeds",
            "1",
            "--out",
            str(tmp_path),
            "--no-plots",
            "--methods",  # Anderson's 1/L step and the baselines it is compared with
            "aa_sgd_m5",
        ]
    )
    summary = res["problems"]["least_squares_large"]["summary"]
    assert set(summary) == {"nesterov", "adam", "aa_sgd_m5"}
    # the study's iterations, gradient evaluations and speedup, recomputed from its curves
    prob = res["problems"]["least_squares_large"]
    iters = {n: iters_to_target(prob["curves"][n][0], prob["target"]) for n in summary}
    for n, it in iters.items():
        assert summary[n]["seeds"][0]["iters"] == it, n
        if it is not None:  # one gradient per iteration, the first point's included
            assert summary[n]["seeds"][0]["grad_evals"] == it + 1, n
    best = min(iters[b] for b in ("nesterov", "adam") if iters[b] is not None)
    speedup = prob["ratios"]["aa_sgd_m5:iters_speedup"]
    assert speedup == pytest.approx(best / iters["aa_sgd_m5"])
    assert speedup > 1.5  # Anderson's ~110 iterations against Nesterov's ~210
    bench = _bench_anderson()
    out = bench.time_to_target(f"{res['run_dir']}/results.json", 1)
    timed = out["least_squares_large"]["ms"]
    # Nesterov and Anderson reach the target (~210 and ~110 of 300 iterations); each method
    # that reached it is re-timed.
    reached = {n for n in summary if summary[n]["seeds"][0]["iters"]}
    assert {"nesterov", "aa_sgd_m5"} <= reached
    assert set(timed) == {f"{n}/0" for n in reached} and min(timed.values()) > 0
    # the speedup: the faster baseline's time over Anderson's (one seed)
    best = min(timed[f"{b}/0"] for b in ("nesterov", "adam") if f"{b}/0" in timed)
    speedup = out["least_squares_large"]["speedup"]["aa_sgd_m5"]
    assert speedup == pytest.approx(best / timed["aa_sgd_m5/0"])


def test_anderson_on_least_squares_is_no_faster_than_cg_and_near_it():
    # CG is the Krylov lower bound on a quadratic: Anderson on SGD cannot beat it, and
    # (orthogonal history) should come within ~25% of it.
    import jax

    from experiments.anderson.cg_reference import cg_iterations
    from experiments.anderson.problems import least_squares
    from experiments.anderson.runner import Method, run_deterministic

    with jax.enable_x64(True):  # data and params in float64, as the study builds them
        prob = least_squares()
        res = run_deterministic(
            prob, Method("aa", "aa_sgd", lr=prob.lr_sgd, memory=5), jax.random.PRNGKey(0), 300
        )
    f0 = res["loss"][0]
    aa = iters_to_target(res["loss"], prob.f_star + 1e-6 * (f0 - prob.f_star))
    cg = cg_iterations(prob, seed=0)
    assert cg is not None and aa is not None
    assert cg <= aa <= 1.25 * cg


def test_compiled_runs_belong_to_their_problem():
    """Two problems of one name but different data: each run sees its own data (the
    compiled programs were cached by name, so the second reused the first one's data)."""
    import jax

    from experiments.anderson.problems import least_squares
    from experiments.anderson.runner import Method, run_deterministic

    key, firsts = jax.random.PRNGKey(0), []
    for seed in (0, 1):
        prob = least_squares(n=60, d=12, seed=seed)
        res = run_deterministic(prob, Method("sgd", "sgd", lr=prob.lr_sgd), key, 3)
        own = float(prob.loss(prob.init(key), prob.data))
        np.testing.assert_allclose(res["loss"][0], own, rtol=1e-6)
        firsts.append(res["loss"][0])
    assert firsts[0] != firsts[1]


def test_method_selection_brings_the_baselines_anderson_steps_on(tmp_path, capsys):
    from dataclasses import replace

    from experiments.anderson.problems import least_squares, mlp_diabetes
    from experiments.anderson.run import METHODS, main, select_methods
    from experiments.anderson.runner import anderson_base, anderson_methods, tuning_grids

    convex, minibatch = least_squares(n=60, d=12), mlp_diabetes(True, epochs=2)
    # All of METHODS, and nothing else, is what the study runs on one problem or another.
    names = set()
    for prob in (convex, minibatch):
        grids = tuning_grids(prob)
        names |= set(grids) | {
            m.name for m in anderson_methods(prob, {f: g[0] for f, g in grids.items()})
        }
    assert names == set(METHODS)
    # anderson_base names the only tuned family an Anderson variant reads: changing any
    # other family's tuned step leaves it unchanged.
    for prob in (convex, minibatch):
        grids = tuning_grids(prob)
        tuned = {f: g[0] for f, g in grids.items()}
        for m in anderson_methods(prob, tuned):
            base = anderson_base(prob, m.family)
            for fam in set(grids) - {base}:
                other = {**tuned, fam: replace(tuned[fam], lr=123.0, momentum=0.5)}
                assert m in anderson_methods(prob, other), (m.name, fam)
    # Deterministic: the best of tuned Nesterov and Adam is the reference (1/L: no sgd).
    grids, aa = select_methods(convex, ["aa_sgd_m5", "aa_momentum_m5"])
    assert set(grids) == {"nesterov", "adam"} and aa == {"aa_momentum_m5", "aa_sgd_m5"}
    assert set(select_methods(convex, ["lbfgs"])[0]) == {"lbfgs"}
    # Minibatch: the inner optimizer (aa_sgd's tuned step is also SGD's); m20 does not run.
    grids, aa = select_methods(minibatch, ["aa_sgd_m5_avg", "aa_sgd_m20"])
    assert set(grids) == {"sgd"} and aa == {"aa_sgd_m5_avg"}
    assert select_methods(minibatch, ["aa_sgd_m20"]) == ({}, set())
    assert select_methods(convex, None)[0].keys() == tuning_grids(convex).keys()
    # A problem none of the methods runs on is skipped, and said so.
    argv = ["--problems", "least_squares", "--methods", "aa_adam_m5_avg", "--out", str(tmp_path)]
    res, again = main(argv), main(argv)
    assert res["skipped"] == ["least_squares"] and res["problems"] == {}
    with open(os.path.join(res["run_dir"], "results.json")) as fh:
        assert json.load(fh)["skipped"] == ["least_squares"]
    # two runs started within a second get a run folder each (the second used to reuse it)
    assert res["run_dir"] != again["run_dir"] and len(os.listdir(tmp_path)) == 2
    # An unknown name stops before any run folder.
    with pytest.raises(SystemExit):
        main(["--methods", "aa_bogus", "--out", str(tmp_path / "bad")])
    assert "invalid choice" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_minibatch_check_writes_a_fresh_run_folder_each_run(tmp_path, capsys):
    # Real runs at 5% of the epochs, one seed (~14 s, compiling six programs once).
    from experiments.anderson import minibatch

    argv = ["--problems", "mlp_diabetes_minibatch", "--seeds", "1", "--scale", "0.05"]
    argv += ["--out", str(tmp_path), "--no-progress"]
    first, second = minibatch.main(argv), minibatch.main(argv)  # same second: still two folders
    assert first != second and sorted(tmp_path.iterdir()) == sorted([first, second])
    runs = []
    for run_dir in (first, second):
        saved = json.loads((run_dir / "minibatch.json").read_text())
        assert saved["settings"]["problems"] == ["mlp_diabetes_minibatch"]
        assert saved["settings"]["seeds"] == 1 and saved["settings"]["scale"] == 0.05
        per_inner = saved["problems"]["mlp_diabetes_minibatch"]
        assert set(per_inner) == set(minibatch.TUNED["mlp_diabetes_minibatch"])
        for rec in per_inner.values():
            assert np.isfinite(rec["inner"] + rec["anderson"]).all()
            np.testing.assert_allclose(rec["ratios"], np.divide(rec["anderson"], rec["inner"]))
        runs.append(per_inner)
        assert (run_dir / "minibatch.png").stat().st_size > 1000
    assert runs[0] == runs[1]  # a function of its seeds
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(second)
    with pytest.raises(SystemExit):
        minibatch.main(["--seeds", "0", "--out", str(tmp_path / "bad")])
    assert not (tmp_path / "bad").exists()


def test_bench_kernel_profile_counts_the_anderson_steps_kernels():
    # bench_anderson --profile reads XLA's thunks back from a jax.profiler trace: an
    # Anderson step runs more of them, for longer, than its inner SGD step.
    import jax
    import optax

    from jaxsci.optim import anderson

    bench = _bench_anderson()
    key = jax.random.PRNGKey(0)
    params = bench.init_mlp(key, [16, 16, 8, 10])
    x = jax.random.normal(key, (8, 16))
    y = jax.random.randint(key, (8,), 0, 10)
    steps = 4
    prof = {}
    for name, opt, with_value in (
        ("sgd", optax.sgd(1e-2), False),
        ("aa", anderson(optax.sgd(1e-2), 3), True),
    ):
        fn = bench.make_train(opt, x, y, steps, with_value)
        p = jax.tree_util.tree_map(lambda a: a.copy(), params)
        jax.block_until_ready(fn(p, opt.init(p)))  # compiled outside the trace
        p = jax.tree_util.tree_map(lambda a: a.copy(), params)
        prof[name] = bench.kernel_profile(fn, (p, opt.init(p)), steps)
    for r in prof.values():
        assert r["kernels"] > 0 and 0 < r["busy_us"] and r["top"]
        totals = [per_step * mean for _, per_step, mean in r["top"]]
        assert totals == sorted(totals, reverse=True)
        assert not any(n.startswith("while") for n, _, _ in r["top"])  # containers left out
    assert prof["aa"]["kernels"] > 2 * prof["sgd"]["kernels"]


def test_bench_update_alone_harness_accelerates_on_a_real_problem():
    # The update-alone timing must time Anderson steps: on its quadratic the extrapolation
    # is taken on most steps (the old harness, one gradient rescaled with made-up losses,
    # held it off on 18 of 20), and the steps descend.
    import jax
    import optax

    from jaxsci.optim import anderson

    bench = _bench_anderson()
    params = bench.init_mlp(jax.random.PRNGKey(0), [16, 16, 8, 10])
    loss, start = bench.separable_quadratic(params, jax.random.PRNGKey(1))
    steps = 20
    out = {}
    for name, opt in (("sgd", optax.sgd(0.5)), ("aa", anderson(optax.sgd(0.5), 5))):
        fn = bench.make_update_only(opt, loss, steps, name == "aa")
        p = jax.tree_util.tree_map(lambda a: a.copy(), start)
        out[name] = fn(p, opt.init(p))
    c = bench.counters(out["aa"][1])
    assert c["accelerated"] >= steps // 2 and c["noisy"] == 0, c
    assert bench.counters(out["sgd"][1]) == {}
    assert float(loss(out["aa"][0])) < 0.1 * float(loss(out["sgd"][0])) < 0.1 * float(loss(start))


def test_the_nonconvex_target_counts_final_iterates_and_ignores_nan():
    """s28 probe: f_ref was min over the curves (iterates 0..N-1), so a final iterate below
    them (Adam's 0.15902 against f_ref 0.16151) never counted; a NaN inside a curve made
    Python's min depend on its position."""
    from experiments.anderson.run import best_loss

    runs = {
        "adam": [{"loss": [1.0, 0.5, 0.2], "final_loss": 0.15}],
        "aa": [{"loss": [1.0, float("nan"), 0.3], "final_loss": 0.25}],
        "diverged": [{"loss": [float("nan"), 0.0], "final_loss": 0.0}],  # starts non-finite
    }
    assert best_loss(runs) == 0.15
    runs["aa"][0]["loss"] = [1.0, 0.1, float("nan")]
    assert best_loss(runs) == 0.1


# ----------------------------------------------------------------------------- config and CLI


def _finite_numbers(tree) -> list[float]:
    """Every number in a JSON tree (``None``, a target never reached, left out)."""
    if isinstance(tree, dict):
        return [x for v in tree.values() for x in _finite_numbers(v)]
    if isinstance(tree, list):
        return [x for v in tree for x in _finite_numbers(v)]
    return [float(tree)] if isinstance(tree, int | float) and not isinstance(tree, bool) else []


def test_tiny_run_writes_a_run_folder_of_finite_results(tmp_path, capsys):
    from dataclasses import asdict

    from experiments.anderson.config import METHODS, tiny_config
    from experiments.anderson.run import main

    # --out: the study's older name of --out-root
    res = main(["--tiny", "--no-progress", "--out", str(tmp_path)])
    run_dir = res["run_dir"]
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"run folder: {run_dir}"
    assert os.listdir(tmp_path) == [os.path.basename(run_dir)]
    assert sorted(os.listdir(run_dir)) == ["least_squares.png", "results.json"]
    with open(f"{run_dir}/results.json") as fh:
        saved = json.load(fh, parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))
    assert saved["config"] == json.loads(json.dumps(asdict(tiny_config(out=str(tmp_path)))))
    assert set(saved) == {"config", "problems"} and list(saved["problems"]) == ["least_squares"]
    prob = saved["problems"]["least_squares"]
    assert set(prob) == {
        "problem",
        "deterministic",
        "target",
        "f_ref",
        "tuned",
        "tuning",
        "summary",
        "ratios",
        "curves",
    }
    assert set(prob["tuned"]) == {"sgd", "nesterov", "adam", "lbfgs"}
    # every method that runs on a deterministic problem, one seed of 100 iterations
    assert set(prob["summary"]) == set(METHODS) - {"aa_sgd_m5_avg", "aa_adam_m5_avg"}
    assert all(len(c) == 1 and len(c[0]) == 100 for c in prob["curves"].values())
    numbers = _finite_numbers(prob)
    assert len(numbers) > 1000 and np.all(np.isfinite(numbers))
    assert 0 < prob["f_ref"] < prob["target"]
    for name, entry in prob["summary"].items():  # every method descends
        assert entry["seeds"][0]["final_loss"] < prob["curves"][name][0][0], name
    with open(f"{run_dir}/least_squares.png", "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(f"{run_dir}/least_squares.png") > 1000


@pytest.mark.parametrize(
    "field, value",
    [
        ("problems", ("least_squares", "bogus")),
        ("problems", "least_squares"),
        ("problems", ("least_squares", "least_squares")),
        ("seeds", 0),
        ("seeds", 1.5),
        ("seeds", True),
        ("scale", 0.0),
        ("scale", float("nan")),
        ("scale", float("inf")),
        ("scale", "1"),
        ("methods", ()),
        ("methods", ("aa_bogus",)),
        ("out", ""),
        ("run_name", "a/b"),
        ("plots", "yes"),
        ("progress", 1),
    ],
)
def test_bad_config_values_raise_naming_the_field_before_any_work(field, value, tmp_path):
    from experiments.anderson.config import Config, tiny_config
    from experiments.anderson.run import train_and_evaluate

    Config().validate()
    tiny_config().validate()
    config = tiny_config(**{"out": str(tmp_path / "runs"), field: value})
    with pytest.raises(ValueError, match=field):
        config.validate()
    with pytest.raises(ValueError, match=field):
        train_and_evaluate(config)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "flags",
    [
        ["--tiny", "--seeds", "0"],
        ["--tiny", "--scale", "nan"],
        ["--tiny", "--seeds", "two"],
        ["--tiny", "--problems", "bogus"],
        ["--tiny", "--methods"],
        ["--tiny", "--bogus"],
    ],
)
def test_bad_flags_exit_2_before_anything_is_written(flags, tmp_path, monkeypatch, capsys):
    from experiments.anderson import run

    monkeypatch.setattr(run, "train_and_evaluate", lambda *a: pytest.fail("work started"))
    with pytest.raises(SystemExit) as exc:
        run.main([*flags, "--out-root", str(tmp_path / "runs")])
    assert exc.value.code == 2 and "error:" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_tiny_flag_gives_the_tiny_config_and_flags_override_it():
    from experiments.anderson.config import Config, tiny_config
    from experiments.anderson.run import build_parser, config_from_args

    parse = lambda *flags: config_from_args(build_parser().parse_args(list(flags)))
    assert parse() == Config()
    assert parse("--tiny") == tiny_config(progress=True)  # the command line shows the bar
    argv = ["--tiny", "--seeds", "2", "--no-plots", "--no-progress", "--methods", "adam"]
    argv += ["--problems", "logistic_regression", "least_squares", "logistic_regression"]
    assert parse(*argv) == tiny_config(
        problems=("logistic_regression", "least_squares"),  # named twice: runs once
        seeds=2,
        methods=("adam",),
        plots=False,
        progress=False,
    )


def test_minibatch_summary_line_is_the_median_of_the_seeds():
    """One outlier seed must not move the summary (a mean would read 4.0 here)."""
    from experiments.anderson.minibatch import _fmt

    assert _fmt([1.0, 1.0, 10.0]).startswith("1.000 ")
