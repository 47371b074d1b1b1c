"""A 1-D device mesh over this process's devices, for data parallelism within a node."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

from jaxsci._checks import is_int_at_least

__all__ = ["make_mesh"]


def make_mesh(
    n_devices: int | None = None,
    *,
    axis_name: str = "data",
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """Mesh with one axis ``axis_name`` over local devices (GSPMD-style ``Auto`` axis).

    Args:
      n_devices: use the first ``n_devices`` local devices (default: all of them): an int
        (Python or NumPy) ``>= 1``; a bool or a float is a ValueError.
      axis_name: the mesh axis the batch is split over.
      devices: explicit devices instead of ``jax.local_devices()``.
    """
    if n_devices is not None and not is_int_at_least(n_devices, 1):
        raise ValueError(f"make_mesh: n_devices must be an int >= 1 or None, got {n_devices!r}")
    pool = list(devices) if devices is not None else jax.local_devices()
    n = len(pool) if n_devices is None else n_devices
    if not 1 <= n <= len(pool):  # (n_devices too large, or no devices given)
        raise ValueError(f"n_devices={n_devices} but {len(pool)} local devices are available")
    return Mesh(np.array(pool[:n]), (axis_name,), axis_types=(AxisType.Auto,))
