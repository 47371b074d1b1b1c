"""jaxsci.metrics."""

from jaxsci.metrics.fid import (  # issue 6: classifier-based FID / inception score
    FeatureClassifier,
    evaluate_samples,
    fit_feature_classifier,
    frechet_distance,
    inception_score,
)
from jaxsci.metrics.generation import (  # issue 4: generated-structure scores
    PT_NN_DISTANCE,
    Validity,
    check_validity,
    energy_spearman,
    energy_wasserstein,
    kabsch_rmsd,
    novelty_mask,
    uniqueness_mask,
)
from jaxsci.metrics.scaling import scaling_efficiency  # MLPerf-HPC-style scaling
from jaxsci.metrics.structure import (  # issue 3: structure comparison
    Alignment,
    align,
    fingerprint_error,
    match_rows,
    pair_distance_difference,
    sorted_distance_difference,
    sorted_pair_distances,
    structure_rmsd,
)
from jaxsci.metrics.thermo import (  # VAE order parameter: C(T), chi(T), peaks, SRO
    drift_z,
    heat_capacity,
    local_peaks,
    manhattan_order_parameter,
    peak_temperature,
    susceptibility,
    warren_cowley,
)

__all__ = [
    "FeatureClassifier",
    "evaluate_samples",
    "fit_feature_classifier",
    "frechet_distance",
    "inception_score",
    "Alignment",
    "PT_NN_DISTANCE",
    "Validity",
    "align",
    "check_validity",
    "energy_spearman",
    "energy_wasserstein",
    "fingerprint_error",
    "kabsch_rmsd",
    "match_rows",
    "novelty_mask",
    "pair_distance_difference",
    "scaling_efficiency",
    "sorted_distance_difference",
    "sorted_pair_distances",
    "structure_rmsd",
    "uniqueness_mask",
    "drift_z",
    "heat_capacity",
    "local_peaks",
    "manhattan_order_parameter",
    "peak_temperature",
    "susceptibility",
    "warren_cowley",
]
