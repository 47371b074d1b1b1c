"""Configuration of the ACSF fingerprint experiment (units: Angstrom)."""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from dataclasses import dataclass

from jaxsci._checks import is_int_at_least

__all__ = ["ELEMENT", "SHAPE_PARAMS", "Config", "build_particle", "particle_name", "tiny_config"]

#: The particles' element (the ACSF's only species).
ELEMENT = "Pt"
#: The ``ase.cluster`` shapes a particle can take and the integer parameters each is built
#: from, in the order ``ase.cluster.<Shape>("Pt", *params)`` takes them.
SHAPE_PARAMS = {
    "icosahedron": ("noshells",),
    "decahedron": ("p", "q", "r"),
    "octahedron": ("length", "cutoff"),
}


def build_particle(shape: str, params: tuple[int, ...]):
    """The ideal (unrattled) Pt particle ``ase.cluster.<Shape>("Pt", *params)``."""
    from ase.cluster import Decahedron, Icosahedron, Octahedron

    build = {"icosahedron": Icosahedron, "decahedron": Decahedron, "octahedron": Octahedron}
    return build[shape](ELEMENT, *params)


def particle_name(shape: str, n_atoms: int) -> str:
    """A particle's name in the printout, ``results.json`` and the plot: ``"Pt13 icosahedron"``
    (``per_atom.npz`` spells it with ``_`` for the space)."""
    return f"{ELEMENT}{n_atoms} {shape}"


@dataclass(frozen=True)
class Config:
    """Everything the experiment does; ``validate()`` checks it before any work.

    Attributes:
      r_cut: ACSF cutoff radius, Angstrom (cosine cutoff, DScribe's layout).
      rattle: standard deviation of the normal displacement of every coordinate (``ase``'s
        ``Atoms.rattle``), Angstrom, so that the particles are not perfect; 0: ideal ones.
      seed: particle ``i`` is rattled with seed ``seed + i``.
      g2_params: the G2 functions, ``(eta [1/Angstrom^2], R_s [Angstrom])`` pairs.
      g4_params: the G4 functions, ``(eta [1/Angstrom^2], zeta, lambda)`` triples; lambda
        is 1 or -1.
      particles: ``(shape, params)`` of each Pt particle: a shape of :data:`SHAPE_PARAMS`
        and its ``ase.cluster`` parameters (integers), e.g. ``("decahedron", (2, 2, 1))``;
        no two may give the same name (:func:`particle_name`: element, atom count, shape).
      out_root: parent folder of the run folder.
      run_name: prefix of the run folder, ``<out_root>/<run_name>-<UTC timestamp>``.

    Each particle's per-atom ACSF rows are pooled by max, then min, over its atoms into one
    fingerprint of ``2 * n_features`` numbers.
    """

    r_cut: float = 6.0  # Angstrom
    rattle: float = 0.05  # Angstrom
    seed: int = 0
    g2_params: tuple[tuple[float, float], ...] = tuple(
        (eta, rs) for eta in (0.01, 0.1, 0.5, 1.0) for rs in (0.0, 3.0)
    )
    g4_params: tuple[tuple[float, int, int], ...] = tuple(
        (eta, zeta, lam) for eta in (0.001, 0.01, 0.05) for zeta in (1, 4) for lam in (1, -1)
    )
    particles: tuple[tuple[str, tuple[int, ...]], ...] = (
        ("icosahedron", (2,)),  # Pt13
        ("icosahedron", (3,)),  # Pt55
        ("decahedron", (2, 2, 1)),  # Pt75
        ("octahedron", (4, 1)),  # Pt38
    )
    out_root: str = "runs"
    run_name: str = "acsf_fingerprints"

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field (nothing is built or written;
        the particles are built, unrattled, to check their ``ase.cluster`` parameters)."""
        for name, low in (("r_cut", None), ("rattle", 0.0)):
            value = getattr(self, name)
            ok = not isinstance(value, bool) and isinstance(value, numbers.Real)
            ok = ok and math.isfinite(value) and (value > 0 if low is None else value >= low)
            if not ok:
                bound = "> 0" if low is None else ">= 0"
                raise ValueError(f"{name} must be a finite number {bound} Angstrom, got {value!r}")
        n = len(self.particles) if isinstance(self.particles, tuple | list) else 1
        if not is_int_at_least(self.seed, 0) or self.seed + n - 1 >= 2**32:
            raise ValueError(
                f"seed must be an int >= 0 with seed + {n - 1} < 2**32 (particle i is rattled "
                f"with seed + i, a NumPy RandomState seed), got {self.seed!r}"
            )
        self._validate_functions()
        self._validate_particles()
        if not isinstance(self.out_root, str | os.PathLike) or not os.fspath(self.out_root):
            raise ValueError(f"out_root must be a folder path, got {self.out_root!r}")
        name = self.run_name
        if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
            raise ValueError(f"run_name must be a plain folder name, got {name!r}")

    def _validate_functions(self) -> None:
        """``jaxsci.descriptors.ACSF``'s own checks of the functions, and G4's lambda."""
        from jaxsci.descriptors.acsf_kernel import validate_params

        def named(field: str, err: Exception) -> ValueError:
            message = str(err)  # ACSF's messages name the field; NumPy's do not
            return ValueError(message if message.startswith(field) else f"{field}: {message}")

        try:
            validate_params(self.g2_params, None, None, None)
        except (TypeError, ValueError) as err:
            raise named("g2_params", err) from None
        try:
            _, _, g4, _ = validate_params(None, None, self.g4_params, None)
        except (TypeError, ValueError) as err:
            raise named("g4_params", err) from None
        lams = [row[2] for row in g4]
        if any(lam not in (1.0, -1.0) for lam in lams):
            raise ValueError(f"g4_params: lambda must be 1 or -1, got {lams}")

    def _validate_particles(self) -> None:
        if not isinstance(self.particles, tuple | list) or not self.particles:
            raise ValueError(
                f"particles must be a non-empty tuple of (shape, params) pairs, got "
                f"{self.particles!r}"
            )
        names = []
        for entry in self.particles:
            ok = isinstance(entry, tuple | list) and len(entry) == 2
            shape, params = entry if ok else (None, None)
            ok = ok and isinstance(shape, str) and shape in SHAPE_PARAMS
            ok = ok and isinstance(params, tuple | list) and len(params) == len(SHAPE_PARAMS[shape])
            integer = lambda p: isinstance(p, numbers.Integral) and not isinstance(p, bool)
            if not (ok and all(map(integer, params))):
                shapes = ", ".join(f"{s} ({', '.join(p)})" for s, p in SHAPE_PARAMS.items())
                raise ValueError(
                    f"particles: each is (shape, integer params), one of {shapes}; got {entry!r}"
                )
            try:
                atoms = build_particle(shape, tuple(params))
            except ValueError as err:  # ase.cluster's own checks (e.g. p and q >= 1)
                raise ValueError(f"particles: {entry!r}: {err}") from None
            names.append(particle_name(shape, len(atoms)))
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"particles: two give the same name {twice} (atom count and shape)")


def tiny_config(**changes) -> Config:
    """A smoke-test config of seconds: three small particles (13, 7 and 6 atoms, one of
    each shape), the same functions."""
    base = Config(
        particles=(("icosahedron", (2,)), ("decahedron", (2, 1, 0)), ("octahedron", (2, 0)))
    )
    return dataclasses.replace(base, **changes)
