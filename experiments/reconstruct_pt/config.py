"""Configuration of the reconstruct_pt experiment."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

SHAPES = ("icosahedron", "octahedron", "decahedron", "random", "complete")


@dataclass(frozen=True)
class Config:
    """Clusters to reconstruct and the reconstruction budget.

    sizes: atom counts; shapes: seed shapes from ``jaxsci.data.pt_clusters.seed_cluster``
    (icosahedron, octahedron, decahedron trimmed to N; random packings) and ``complete``
    (every complete ``ase.cluster`` icosahedron, Ino/Marks decahedron and truncated
    octahedron of exactly N atoms, :func:`jaxsci.geometry.complete_motifs`; none for most
    N), each rattled and relaxed with EMT; per_shape: clusters per (size, shape);
    g2_etas / g4_params: the fingerprint (8 G2 with Rs = 0 and 12 G4 by default, r_cut in
    Angstrom);
    time_limit: seconds per reconstruction; n_starts: parallel starts.
    """

    sizes: tuple[int, ...] = (8, 13, 19, 30, 40, 55)
    shapes: tuple[str, ...] = SHAPES
    per_shape: int = 1
    r_cut: float = 6.0
    g2_etas: tuple[float, ...] = (0.003, 0.01, 0.03, 0.06, 0.1, 0.2, 0.4, 1.0)
    g4_params: tuple[tuple[float, float, float], ...] = field(
        default_factory=lambda: tuple(
            (eta, zeta, lam)
            for eta in (0.001, 0.01, 0.05)
            for zeta in (1.0, 4.0)
            for lam in (1, -1)
        )
    )
    time_limit: float = 58.0  # reconstruct's default: returns within it (the issue: < 60 s)
    n_starts: int = 64
    seed: int = 0
    out_dir: str = "runs"
    progress: bool = True

    def validate(self) -> None:
        if not self.sizes or min(self.sizes) < 2:
            raise ValueError(f"sizes must be >= 2 atoms, got {self.sizes}")
        bad = [s for s in self.shapes if s not in SHAPES]
        if bad or not self.shapes:
            raise ValueError(f"unknown shapes {bad}: choose from {SHAPES}")
        if self.per_shape < 1 or self.n_starts < 1 or not self.time_limit > 0:  # nan too
            raise ValueError(
                "per_shape and n_starts must be >= 1 and time_limit > 0 s (inf: no limit), got "
                f"{self.per_shape}, {self.n_starts} and {self.time_limit}"
            )
        if self.seed < 0:  # as experiments.reconstruct_pt.labels: seeds of NumPy generators
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if set(self.shapes) == {"complete"}:  # the only shape that can give no cluster
            from jaxsci.data.pt_clusters import lattice_constant
            from jaxsci.geometry import complete_motifs

            if not any(complete_motifs(n, lattice_constant("Pt")) for n in self.sizes):
                raise ValueError(f"no complete ase.cluster shape has {list(self.sizes)} atoms")

    def to_dict(self) -> dict:
        return asdict(self)


def tiny() -> Config:
    """A seconds-scale config for smoke tests."""
    return Config(sizes=(6,), shapes=("icosahedron",), time_limit=5.0, n_starts=4, progress=False)
