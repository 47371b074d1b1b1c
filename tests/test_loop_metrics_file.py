"""fit leaves its metrics file alone when the first epoch's metrics are refused."""

import numpy as np
import pytest

from jaxsci.train.loop import fit, read_jsonl


@pytest.mark.parametrize(
    "metrics, match",
    [({"epoch": 1.0}, "'epoch' or 'time_s'"), ({"v": np.ones(3)}, "scalars")],
)
def test_refused_metrics_leave_the_metrics_file_untouched(tmp_path, metrics, match):
    # the file used to be truncated to the resumed epochs before the names were checked
    log = tmp_path / "m.jsonl"
    fit(
        0.0,
        lambda s, e: (s + 1, {"loss": float(e)}),
        num_epochs=4,
        metrics_path=log,
        progress=False,
    )
    before = log.read_bytes()
    with pytest.raises(ValueError, match=match):
        fit(
            2.0,
            lambda s, e: (s, metrics),
            num_epochs=4,
            start_epoch=2,
            metrics_path=log,
            progress=False,
        )
    assert log.read_bytes() == before
    # a run with nothing left to do still drops the records past its start
    res = fit(
        2.0, lambda s, e: (s, {}), num_epochs=2, start_epoch=2, metrics_path=log, progress=False
    )
    assert [r["epoch"] for r in read_jsonl(log)] == [0, 1] == [r["epoch"] for r in res.history]


def test_a_corrupt_metrics_file_fails_before_the_first_epoch(tmp_path):
    log = tmp_path / "m.jsonl"
    log.write_text('{"epoch": 0}\nnot json\n{"epoch": 2}\n')
    calls = []
    with pytest.raises(ValueError, match="line 2: not JSON"):
        fit(
            0.0,
            lambda s, e: calls.append(e) or (s, {}),
            num_epochs=3,
            start_epoch=1,
            metrics_path=log,
            progress=False,
        )
    assert calls == []


def test_bfloat16_nan_and_inf_are_written_as_null(tmp_path):
    """s28 probe: bf16 is not a NumPy floating type, so its NaN reached json.dumps as a
    float and the strict write failed ("Out of range float values")."""
    import json

    import jax.numpy as jnp

    from jaxsci.train import to_jsonable, write_json

    x = jnp.array([1.5, jnp.nan, jnp.inf], jnp.bfloat16)
    assert to_jsonable(x) == [1.5, None, None]
    assert to_jsonable(x[1]) is None and to_jsonable(x[0]) == 1.5
    path = write_json(tmp_path / "m.json", {"x": x})
    assert json.loads(path.read_text()) == {"x": [1.5, None, None]}
