"""jaxsci.metrics."""

from jaxsci.metrics.structure import (  # issue 3: structure comparison
    Alignment,
    align,
    fingerprint_error,
    match_rows,
    pair_distance_difference,
    sorted_pair_distances,
    structure_rmsd,
)

__all__ = [
    "Alignment",
    "align",
    "fingerprint_error",
    "match_rows",
    "pair_distance_difference",
    "sorted_pair_distances",
    "structure_rmsd",
]
