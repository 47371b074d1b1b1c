"""Shared pytest configuration.

The multidevice tests need ``XLA_FLAGS=--xla_force_host_platform_device_count=4``
set before JAX starts (``make test`` does it); the mpi tests need ``mpirun -n 2``.
Both are skipped with a clear reason when run outside that setting.
"""

import os

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MPLBACKEND", "Agg")


def _mpi_size() -> int:
    """The launcher's job size (1 without one), from the variables ``bootstrap`` reads."""
    from jaxsci.parallel.bootstrap import _SIZE_VARS

    for var in _SIZE_VARS:
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 1


def pytest_collection_modifyitems(config, items):
    import jax

    n_dev = jax.local_device_count()
    size = _mpi_size()
    for item in items:
        if "multidevice" in item.keywords and n_dev < 4:
            item.add_marker(pytest.mark.skip(reason="needs 4 devices: run via `make test`"))
        if "mpi" in item.keywords and size < 2:
            item.add_marker(pytest.mark.skip(reason="needs mpirun -n 2: run via `make test`"))


def _memory_maps() -> int | None:
    """Memory mappings of this process (Linux), or None where /proc cannot tell."""
    try:
        with open("/proc/self/maps", "rb") as maps:
            return sum(1 for _ in maps)
    except OSError:
        return None


def _max_map_count() -> int:
    try:
        with open("/proc/sys/vm/max_map_count") as limit:
            return int(limit.read())
    except (OSError, ValueError):
        return 65530  # Linux's default


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """After a test file, drop JAX's compiled programs once this process holds over half of
    the kernel's memory mappings. Every loaded XLA CPU executable maps some 9 regions and
    JAX's caches keep them, so a test worker that ran half of the suite reached 60,000 of
    the 65,530 allowed, and XLA aborted when a compilation or a compile-cache write could
    map no more ("Fatal Python error: Aborted"). Programs are shared within a file; a
    later file compiles what it needs again, or reads it from the persistent cache."""
    yield
    count = _memory_maps()
    if count is not None and count > _max_map_count() // 2:
        import jax

        jax.clear_caches()


@pytest.fixture
def read_only():
    """``read_only(path)`` makes the folder or file ``path`` unwritable for this process, or
    skips the test where it cannot: mode 0o555 stops a normal user; root ignores modes, so
    there the immutable flag (``chattr +i``) is tried. Undone at teardown."""
    import shutil
    import subprocess
    import tempfile
    from pathlib import Path

    done: list[tuple[Path, bool]] = []

    def writable(path: Path) -> bool:
        try:
            if path.is_dir():
                os.rmdir(tempfile.mkdtemp(dir=path))
            else:
                open(path, "a").close()  # noqa: SIM115 (a probe: opened and closed)
        except OSError:
            return False
        return True

    def make(path) -> None:
        path = Path(path)
        path.chmod(0o555)
        done.append((path, False))
        if writable(path) and shutil.which("chattr"):
            run = subprocess.run(["chattr", "+i", str(path)], capture_output=True)
            if run.returncode == 0:
                done.append((path, True))
        if writable(path):  # root, and chattr missing or refused (no CAP_LINUX_IMMUTABLE,
            # tmpfs/overlay): the test cannot show what it checks here
            pytest.skip(
                "cannot make a folder or file read-only here: root ignores modes, and "
                "chattr +i is missing or was refused"
            )

    yield make
    for path, immutable in reversed(done):
        if immutable:
            subprocess.run(["chattr", "-i", str(path)], capture_output=True)
        else:
            path.chmod(0o755)
