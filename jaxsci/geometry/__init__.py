"""jaxsci.geometry: cells, displacements, neighbor lists (free and periodic), cluster motifs."""

from jaxsci.geometry.cell import (
    complete_nonperiodic,
    image_multipliers,
    image_shifts,
    perpendicular_widths,
    validate_cell,
    wrap_positions,
)
from jaxsci.geometry.displacement import (
    free_displacement,
    minimum_image,
    periodic_displacement,
    safe_norm,
)
from jaxsci.geometry.motifs import MOTIFS, complete_motifs, motif_cuts, motif_positions
from jaxsci.geometry.neighbors import (
    CellListSpec,
    NeighborList,
    Slots,
    cell_list_allocate,
    cell_list_spec,
    cell_list_update,
    cell_list_usable,
    count_within,
    dense_slots,
    image_slots,
    max_neighbor_count,
    neighbor_capacity,
    neighbor_list_slots,
    prune_slots,
)

__all__ = [
    "MOTIFS",
    "CellListSpec",
    "NeighborList",
    "Slots",
    "cell_list_allocate",
    "cell_list_spec",
    "cell_list_update",
    "cell_list_usable",
    "complete_motifs",
    "complete_nonperiodic",
    "count_within",
    "dense_slots",
    "free_displacement",
    "image_multipliers",
    "image_shifts",
    "image_slots",
    "max_neighbor_count",
    "minimum_image",
    "motif_cuts",
    "motif_positions",
    "neighbor_capacity",
    "neighbor_list_slots",
    "periodic_displacement",
    "perpendicular_widths",
    "prune_slots",
    "safe_norm",
    "validate_cell",
    "wrap_positions",
]
