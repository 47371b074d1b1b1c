"""jaxsci: a JAX research framework for scientific machine learning at HPC scale.

Subpackages are imported explicitly (``from jaxsci import descriptors``) so that
importing one part never pulls in the heavy dependencies of another (MPI, ase).
"""

__version__ = "0.1.0"
