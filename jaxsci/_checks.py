"""Input predicates shared by jaxsci's modules and its experiments."""

from __future__ import annotations

import numbers

__all__ = ["is_int_at_least"]


def is_int_at_least(value: object, low: int) -> bool:
    """``value`` is an integer (Python or NumPy; not a bool) and ``>= low``."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= low
