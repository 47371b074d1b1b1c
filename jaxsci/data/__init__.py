"""jaxsci.data."""

from jaxsci.data.pt_clusters import (  # issue 4: Pt nanoparticle data set
    PtClusterConfig,
    PtClusterDataset,
    build_pt_clusters,
    bulk_energy_per_atom,
    relax_many,
)

__all__ = [
    "PtClusterConfig",
    "PtClusterDataset",
    "build_pt_clusters",
    "bulk_energy_per_atom",
    "relax_many",
]
