"""jaxsci.data."""

from jaxsci.data.batching import batch_indices, batches  # shuffled epochs, host or jit
from jaxsci.data.crystal_blocks import (  # specimens for jaxsci.imaging
    MATERIALS,
    CrystalBlock,
    SlicedBlock,
    crystal_block,
    slice_block,
)
from jaxsci.data.diabetes import RegressionSplit, load_diabetes_split  # scikit-learn diabetes
from jaxsci.data.digits import (  # issue 6: scikit-learn digits
    DigitsSplit,
    downscale,
    from_digits_scale,
    load_digits_split,
    to_digits_scale,
    upscale,
)
from jaxsci.data.filtering import (  # data filtering for large batches (arXiv 2012.09272)
    ForgettingState,
    el2n_scores,
    forgetting_init,
    forgetting_scores,
    forgetting_update,
    grad_norm_scores,
    n_keep,
    per_example_loss,
    select,
)
from jaxsci.data.pt_clusters import (  # issue 4: Pt nanoparticle data set
    PtClusterConfig,
    PtClusterDataset,
    build_pt_clusters,
    bulk_energy_per_atom,
    is_cached,
    lattice_constant,
    relax_many,
)

__all__ = [
    "batch_indices",
    "batches",
    "RegressionSplit",
    "load_diabetes_split",
    "MATERIALS",
    "CrystalBlock",
    "SlicedBlock",
    "crystal_block",
    "slice_block",
    "DigitsSplit",
    "downscale",
    "from_digits_scale",
    "load_digits_split",
    "to_digits_scale",
    "upscale",
    "ForgettingState",
    "el2n_scores",
    "forgetting_init",
    "forgetting_scores",
    "forgetting_update",
    "grad_norm_scores",
    "n_keep",
    "per_example_loss",
    "select",
    "PtClusterConfig",
    "PtClusterDataset",
    "build_pt_clusters",
    "bulk_energy_per_atom",
    "is_cached",
    "lattice_constant",
    "relax_many",
]
