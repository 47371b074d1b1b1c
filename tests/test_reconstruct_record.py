"""The host-side record of every start's best, and the refinement after success."""

import time

import numpy as np

from jaxsci.reconstruct.solver import N_REFINE, _Record, _refine


def _record_with(errs):
    rec = _Record(len(errs), 2)
    rec.err[:] = errs
    rec.loss[:] = 1.0
    rec.x[:] = np.arange(len(errs))[:, None, None]
    return rec


def test_record_takes_a_point_only_if_search_loss_and_error_are_both_lower():
    rec = _record_with([0.5, 0.5, 0.5])
    asked = []

    def errors(feats):
        asked.append(np.array(feats))
        return feats[:, 0, 0]  # the error is carried in the features here

    reached = np.full((3, 2, 3), 7.0)
    feats = np.array([0.1, 0.9, 0.1])[:, None, None] * np.ones((3, 2, 4))
    low_loss = np.array([0.5, 0.5, 2.0])  # start 2: search loss not lower
    rec.update(low_loss, reached, feats, errors)
    # Rows are matched only for the starts whose search loss improved (0 and 1).
    assert len(asked) == 1 and asked[0].shape[0] == 2
    np.testing.assert_array_equal(rec.err, [0.1, 0.5, 0.5])  # 1: error higher, kept
    np.testing.assert_array_equal(rec.loss, [0.5, 1.0, 1.0])
    assert (rec.x[0] == 7.0).all() and (rec.x[1] == 1.0).all() and (rec.x[2] == 2.0).all()


def test_record_polishes_the_best_once_until_it_improves():
    rec = _record_with([3e-3, 1e-3, 5e-2, 2e-3])
    assert rec.due_for_polish(2, below=1e-2) == [1, 3]
    assert rec.due_for_polish(4, below=1e-2) == [1, 3, 0]  # 5e-2 is above `below`
    rec.polished(1, np.full((2, 3), 9.0), 2e-4)  # lower: taken
    rec.polished(0, np.full((2, 3), 9.0), 4e-3)  # higher: the record stays
    assert rec.err[1] == 2e-4 and (rec.x[1] == 9.0).all()
    assert rec.err[0] == 3e-3 and (rec.x[0] == 0.0).all()
    # Neither is due again until something lowers its error below its last polish.
    assert rec.due_for_polish(4, below=1e-2) == [3]
    rec.err[0] = 2.5e-3
    assert rec.due_for_polish(4, below=1e-2) == [3, 0]
    err, x = rec.best()
    assert err == 2e-4 and (x == 9.0).all()
    x[:] = 0.0  # a copy
    assert (rec.x[1] == 9.0).all()


def test_refine_tries_the_lowest_starts_until_one_reaches_the_goal():
    rec = _record_with([4e-4, 1e-4, 9e-4, 2e-4, 5e-4, 3e-4])
    calls = []

    def refine(x, **limits):
        calls.append((int(x[0, 0]), limits))
        return x + 100.0, {1: 5e-5, 3: 8e-6, 5: 1e-7}.get(int(x[0, 0]), 1.0)

    best = _refine(rec.best(), rec, refine, end=None, goal=1e-5)
    # Matched descents alone, lowest error first, stopping at the first below the goal.
    assert [c[0] for c in calls] == [1, 3]
    assert all(c[1] == {"max_swaps": 0, "gauss_newton_trials": 0} for c in calls)
    assert best[0] == 8e-6 and best[1][0, 0] == 103.0

    calls.clear()
    best = _refine(rec.best(), rec, refine, end=None, goal=1e-9)
    # None reaches it: N_REFINE descents, then the full refinement of the winner.
    assert [c[0] for c in calls] == [1, 3, 5, 0][:N_REFINE] + [105]
    assert calls[-1][1] == {} and best[0] == 1e-7

    calls.clear()
    _refine(rec.best(), rec, refine, end=time.perf_counter() - 1.0, goal=1e-9)
    assert [c[0] for c in calls] == [1]  # past the deadline: the first descent only
