"""The README's first example runs as written, and its reconstruction succeeds."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_first_look_runs():
    text = README.read_text()
    block = re.search(r"## A first look\s+```python\n(.*?)```", text, re.S)
    assert block, "README has no 'A first look' python block"
    scope: dict = {"print": lambda *a, **k: None}
    exec(compile(block.group(1), str(README), "exec"), scope)
    assert scope["forces"].shape == (55, 3)
    assert scope["result"].success and scope["result"].positions.shape == (13, 3)
    assert abs(float(scope["params"]["w"][0]) - 2.0) < 1e-3
    assert scope["mc"].samples.shape == (5, 3, 250)
    assert scope["patterns"].shape == (16, 64, 64) and scope["obj"].shape == (64, 64)
