"""jaxsci.data."""

from jaxsci.data.digits import (  # issue 6: scikit-learn digits
    DigitsSplit,
    downscale,
    from_digits_scale,
    load_digits_split,
    to_digits_scale,
    upscale,
)
from jaxsci.data.pt_clusters import (  # issue 4: Pt nanoparticle data set
    PtClusterConfig,
    PtClusterDataset,
    build_pt_clusters,
    bulk_energy_per_atom,
    lattice_constant,
    relax_many,
)

__all__ = [
    "DigitsSplit",
    "downscale",
    "from_digits_scale",
    "load_digits_split",
    "to_digits_scale",
    "upscale",
    "PtClusterConfig",
    "PtClusterDataset",
    "build_pt_clusters",
    "bulk_energy_per_atom",
    "lattice_constant",
    "relax_many",
]
