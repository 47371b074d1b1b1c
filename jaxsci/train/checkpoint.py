"""Orbax checkpointing of a train-state pytree, single- or multi-process.

Convention: ``save(step, state)`` labels ``state`` with the number of updates already applied
to it, so ``state, step = ckpt.resume(init_state)`` continues with ``for step in range(step,
n_steps)`` and reproduces an uninterrupted run exactly (provided the data and RNG of step ``s``
are functions of ``s``, e.g. ``fold_in(key, s)``).

Under MPI the train state is replicated (data parallelism keeps it identical on every rank), so
one checkpoint is written by rank 0 while the other ranks wait; every rank reads it back. The
state does not depend on the process count, so a run may resume with a different number of
ranks as long as its global batch still divides over them (see ``metadata()["process_count"]``).
Orbax writes into a temporary folder and renames it when complete: a crash never leaves a
half-written step that ``latest_step`` would return.

Run settings: ``save(..., metadata={"settings": {...}})`` stores what defines a run (model,
optimizer, batch size, seed...) beside each step; :meth:`Checkpointer.check_settings`
refuses, naming them, settings that differ from those a checkpoint was saved with, so that
a resume never mixes two different runs.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import warnings
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxsci._checks import is_int_at_least
from jaxsci.parallel.bootstrap import ProcessInfo, bootstrap
from jaxsci.train.run_dir import nearest_existing, to_jsonable

__all__ = [
    "Checkpointer",
    "check_checkpoint_folder",
    "check_settings",
    "normalize_settings",
    "settings_differences",
]

_STATE = "state"
_META = "meta"
_RESERVED_META = ("step", "process_count")  # written by save() itself


def check_checkpoint_folder(directory: str | os.PathLike) -> None:
    """``ValueError`` unless ``directory`` is a folder or could be made one: an existing
    file there, or above it, ended a run at its first save (a raw ``NotADirectoryError``
    after the first epoch's work). Reads only."""
    path = os.path.abspath(os.fspath(directory))
    probe = nearest_existing(path)
    if not probe.is_dir():
        where = "it" if str(probe) == path else probe
        raise ValueError(f"checkpoint folder {path}: {where} is a file, not a folder")


class Checkpointer:
    """Save every ``every`` steps, keep the ``keep`` newest, restore the latest.

    Args:
      directory: folder holding one sub-folder per saved step (created by rank 0).
      every: save only when ``step % every == 0`` (``force=True`` overrides); an int >= 1.
      keep: number of newest checkpoints kept on disk, an int >= 1 (``None``: all).
      info: process info from :func:`jaxsci.parallel.bootstrap` (default: ``bootstrap()``).

    Use as a context manager or call :meth:`close` at the end.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        every: int = 1,
        keep: int | None = 3,
        info: ProcessInfo | None = None,
    ) -> None:
        if not is_int_at_least(every, 1):
            raise ValueError(f"every must be an integer >= 1, got {every!r}")
        if keep is not None and not is_int_at_least(keep, 1):
            raise ValueError(f"keep must be an integer >= 1 or None, got {keep!r}")
        self.directory = os.path.abspath(os.fspath(directory))
        check_checkpoint_folder(self.directory)  # on every rank: none is left waiting
        self.every = int(every)
        self.keep = None if keep is None else int(keep)
        self.info = info if info is not None else bootstrap()
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=1,  # the interval is decided here, identically on every rank
            max_to_keep=None,  # retention is done here, over complete checkpoints only
            create=self.info.is_root,
            enable_async_checkpointing=False,
        )
        if self.info.is_root:
            self._manager = ocp.CheckpointManager(
                self.directory, options=options, item_handlers=_handlers()
            )
            self._sync(None)
        else:
            self._sync(None)  # wait until rank 0 has created the folder
            self._manager = ocp.CheckpointManager(
                self.directory, options=options, item_handlers=_handlers()
            )

    # -- collective helpers -------------------------------------------------------------
    def _sync(self, value: Any) -> Any:
        """Broadcast ``value`` from rank 0; every rank waits for rank 0 to get here."""
        if self.info.comm is None or self.info.size == 1:
            return value
        return self.info.comm.bcast(value, root=0)

    # -- queries --------------------------------------------------------------------------
    def all_steps(self) -> list[int]:
        """Saved steps, ascending."""
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """Newest saved step, or ``None`` if there is no checkpoint yet."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def metadata(self, step: int | None = None) -> dict[str, Any]:
        """JSON metadata saved with ``step`` (default: latest): ``process_count``, ``step``, and
        whatever the caller passed to :meth:`save` (as it reads back from JSON: tuples as
        lists, NaN and inf as ``None``)."""
        step = self._resolve(step)
        args = ocp.args.Composite(**{_META: ocp.args.JsonRestore()})
        out = self._manager.restore(step, args=args)
        return dict(out[_META])

    def check_settings(self, settings: Mapping[str, Any], step: int | None = None) -> None:
        """ValueError naming every setting in which ``settings`` differ from the
        ``metadata["settings"]`` saved with ``step`` (default: latest).

        A checkpoint saved without settings (an older run) is not checked: a warning says so.
        Reads only; nothing is written.
        """
        step = self._resolve(step)
        saved = self.metadata(step).get("settings")
        if saved is None:
            warnings.warn(
                f"checkpoint step {step} in {self.directory} holds no run settings: "
                f"resuming without checking that they match",
                stacklevel=2,
            )
            return
        check_settings(saved, settings, f"checkpoint step {step} in {self.directory}")

    # -- save / restore -----------------------------------------------------------------
    def should_save(self, step: int) -> bool:
        """Whether :meth:`save` at ``step`` writes (same answer on every rank)."""
        return _as_step(step) % self.every == 0

    def save(
        self,
        step: int,
        state: Any,
        *,
        metadata: dict[str, Any] | None = None,
        force: bool = False,
    ) -> bool:
        """Write ``state`` as ``step`` if ``step % every == 0`` or ``force``; collective.

        Args:
          step: number of updates applied to ``state``: an integer >= 0 (a Python or NumPy
            integer, or a 0-d integer array; not a float or a bool, whose folder name
            ``3.0`` no query would ever find).
          state: a pytree of arrays (jax or numpy), numbers and PRNG keys, identical on all
            ranks. Python and NumPy numbers come back as Python numbers.
          metadata: JSON-serialisable extras stored beside the state (config, data position),
            converted as :func:`jaxsci.train.to_jsonable` does (NumPy/JAX numbers as Python
            ones, tuples as lists, NaN and inf as ``None``, as :func:`normalize_settings`).
            The keys ``step`` and ``process_count`` are the checkpoint's own and refused.
          force: save even off the interval.

        Returns:
          True if a checkpoint was written (False off the interval or if ``step`` exists).
          So do not pass ``save`` itself (or ``lambda e, s, m: ckpt.save(e + 1, s)``) as a
          :func:`jaxsci.train.fit` callback: a callback returning ``True`` stops training, so
          it would stop after the first checkpoint. Wrap it in a ``def`` that returns
          ``None``, or in :func:`jaxsci.train.every` (which ignores the return value).

        Raises:
          ValueError: ``step`` is not an integer >= 0; ``metadata`` uses a reserved key; or
            the folder holds a complete checkpoint of a later step (another run's: nothing
            is written, nothing deleted). After a write, only the ``keep`` newest complete
            checkpoints stay; other folders are left alone.
          TypeError: ``metadata`` is not a mapping or holds a value JSON cannot represent.
            Both argument checks run before anything is written, on every rank.
        """
        step = _as_step(step)
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        meta = _checked_metadata(metadata)
        if not (force or self.should_save(step)):
            return False
        state = _numbers_as_python(state)
        # finish this rank's pending device work (it may include mpi4jax collectives) before
        # the host-side collective below
        jax.block_until_ready(state)
        saved = False
        error: str | None = None
        if self.info.is_root:
            try:
                self._manager.reload()
                newer = [s for s in self._manager.all_steps() if s > step and self._complete(s)]
                if newer:  # e.g. a fresh run pointed at an old run's folder
                    raise ValueError(
                        f"{self.directory} already holds step {max(newer)} > {step}: a "
                        "checkpoint folder holds one run (resume() would pick that step, and "
                        "keeping the newest would delete the other run's); resume from it or "
                        "use a fresh folder"
                    )
                if step not in self._manager.all_steps():
                    meta = {"step": step, "process_count": self.info.size, **meta}
                    saved = bool(
                        self._manager.save(
                            step,
                            args=ocp.args.Composite(
                                **{
                                    _STATE: ocp.args.StandardSave(state),
                                    _META: ocp.args.JsonSave(meta),
                                }
                            ),
                            force=True,
                        )
                    )
                    self._manager.wait_until_finished()
                    self._drop_old()
            except Exception as err:  # report on every rank instead of leaving them waiting
                error = f"{type(err).__name__}: {err}"
                saved_exc = err
        saved, error = self._sync((saved, error))
        if error is not None:
            if self.info.is_root:
                raise saved_exc
            raise RuntimeError(f"rank 0 failed to save checkpoint step {step}: {error}")
        return saved

    def restore(self, target: Any, step: int | None = None) -> Any:
        """Read ``step`` (default: latest) into the structure of ``target``.

        Args:
          target: a pytree with the saved structure: a freshly initialised state, or the same
            tree of ``jax.ShapeDtypeStruct``. Arrays come back with its dtypes, shapes and
            shardings.
          step: which checkpoint; default the newest.

        Raises:
          FileNotFoundError: no checkpoint (or not that step) in ``directory``.
          ValueError: the saved tree does not match ``target``'s structure, shapes or dtypes.
        """
        step = self._resolve(step)
        target = _numbers_as_python(target)
        try:
            self._check_saved_matches(target, step)
        except (KeyError, FileNotFoundError) as err:  # e.g. an empty folder named "9"
            raise ValueError(
                f"{os.path.join(self.directory, str(step))} is not a complete jaxsci "
                f"checkpoint ({type(err).__name__}: {err}); remove it or restore another step"
            ) from err
        abstract = jax.tree.map(
            lambda x: x if isinstance(x, int | float) else ocp.utils.to_shape_dtype_struct(x),
            target,
        )
        try:
            out = self._manager.restore(
                step, args=ocp.args.Composite(**{_STATE: ocp.args.StandardRestore(abstract)})
            )
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(
                f"checkpoint step {step} in {self.directory} does not match the target "
                f"structure: {err}"
            ) from err
        restored = out[_STATE]
        _check_like(restored, target, step)
        return restored

    def resume(self, init_state: Any) -> tuple[Any, int]:
        """``(restored state, latest step)`` if a checkpoint exists, else ``(init_state, 0)``."""
        step = self.latest_step()
        if step is None:
            return init_state, 0
        return self.restore(init_state, step), step

    def close(self) -> None:
        """Finish pending writes and release the manager."""
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_saved_matches(self, target: Any, step: int) -> None:
        """Compare the saved leaves (names, shapes, dtypes) with ``target`` before reading."""
        saved = {}
        for leaf in jax.tree.leaves(self._manager.item_metadata(step)[_STATE]):
            if getattr(leaf, "shape", None) is not None and getattr(leaf, "name", None):
                saved[leaf.name] = (tuple(leaf.shape), np.dtype(leaf.dtype))
        wanted = {}
        for path, leaf in jax.tree_util.tree_flatten_with_path(target)[0]:
            name = ".".join(_key_str(k) for k in path)
            if hasattr(leaf, "dtype") and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
                leaf = jax.eval_shape(jax.random.key_data, leaf)
            if isinstance(leaf, int | float):  # Orbax stores Python numbers as 64-bit scalars
                kind = bool if isinstance(leaf, bool) else type(leaf)
                wanted[name] = ((), np.dtype({bool: bool, int: np.int64}.get(kind, np.float64)))
            elif hasattr(leaf, "shape"):
                wanted[name] = (tuple(leaf.shape), np.dtype(leaf.dtype))
        where = f"checkpoint step {step} in {self.directory}"
        missing = sorted(set(wanted) - set(saved))
        extra = sorted(set(saved) - set(wanted))
        if missing or extra:
            raise ValueError(
                f"{where} does not match the target tree: leaves missing from the checkpoint "
                f"{missing[:5]}, leaves not in the target {extra[:5]}"
            )
        for name, (shape, dtype) in wanted.items():
            if saved[name] != (shape, dtype):
                got_shape, got_dtype = saved[name]
                hint = _x64_hint(got_shape, got_dtype, shape, dtype)
                raise ValueError(
                    f"{where}: leaf {name!r} was saved as {got_dtype}{list(got_shape)} but the "
                    f"target wants {dtype}{list(shape)}{hint}"
                )

    def _complete(self, step: int) -> bool:
        """Does the folder of ``step`` hold both items a save writes (not, e.g., an empty
        folder that a crash or a user left with a step's name)?"""
        folder = os.path.join(self.directory, str(step))
        return all(os.path.isdir(os.path.join(folder, item)) for item in (_STATE, _META))

    def _drop_old(self) -> None:
        """Delete all but the ``keep`` newest complete checkpoints (rank 0). Other folders
        are left alone: Orbax's own retention counted them and deleted real steps."""
        if self.keep is None:
            return
        complete = [s for s in sorted(self._manager.all_steps()) if self._complete(s)]
        for step in complete[: -self.keep]:
            self._manager.delete(step)

    def _resolve(self, step: int | None) -> int:
        steps = self.all_steps()
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        if step is None:
            return steps[-1]
        step = _as_step(step)
        if step not in steps:
            raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory}: {steps}")
        return step


def normalize_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` as they read back from JSON (tuples as lists, NumPy numbers as Python
    ones, NaN as None): the form :func:`settings_differences` compares."""
    return json.loads(json.dumps(to_jsonable(dict(settings)), allow_nan=False))


def settings_differences(
    saved: Mapping[str, Any],
    mine: Mapping[str, Any],
    *,
    rel_tol: float = 1e-5,
    abs_tol: float = 1e-9,
) -> dict[str, tuple[Any, Any]]:
    """``{dotted name: (saved, mine)}`` of the settings that differ (missing on one side
    included). Floats compare with ``rel_tol`` / ``abs_tol`` (the same setting computed on
    other hardware may differ in its last bits); integers (seeds, PRNG key data, batch
    sizes, shapes, counts) and everything else exactly; a list differs as a whole."""
    out: dict[str, tuple[Any, Any]] = {}
    _diff(normalize_settings(saved), normalize_settings(mine), "", out, rel_tol, abs_tol)
    return out


def _diff(a: Any, b: Any, path: str, out: dict, rel_tol: float, abs_tol: float) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            name = f"{path}.{k}" if path else k
            if k not in a or k not in b:
                out[name] = (a.get(k, "<absent>"), b.get(k, "<absent>"))
            else:
                _diff(a[k], b[k], name, out, rel_tol, abs_tol)
    elif not _same(a, b, rel_tol, abs_tol):
        out[path] = (a, b)


def _same(a: Any, b: Any, rel_tol: float, abs_tol: float) -> bool:
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(
            _same(x, y, rel_tol, abs_tol) for x, y in zip(a, b, strict=True)
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k], rel_tol, abs_tol) for k in a)
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers):
        if isinstance(a, bool) or isinstance(b, bool):
            return a is b
        if isinstance(a, int) and isinstance(b, int):  # seeds, key data, sizes, counts
            return a == b
        return math.isclose(a, b, rel_tol=rel_tol, abs_tol=abs_tol)
    return a == b


def check_settings(saved: Mapping[str, Any], mine: Mapping[str, Any], where: str) -> None:
    """ValueError naming the settings in which ``mine`` differ from ``saved`` (of ``where``)."""
    diff = settings_differences(saved, mine)
    if diff:
        shown = "; ".join(f"{k}: saved {_short(a)}, now {_short(b)}" for k, (a, b) in diff.items())
        raise ValueError(
            f"{where} was made with other settings ({', '.join(diff)} differ): {shown}. "
            f"Resume with the settings it was made with, or use a fresh checkpoint folder."
        )


def _short(value: Any, limit: int = 120) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _as_step(step: Any) -> int:
    """``step`` as a Python int: a Python or NumPy integer or a 0-d integer array (JAX or
    NumPy); ValueError for anything else (a float, even ``3.0``; a bool)."""
    if not isinstance(step, bool | np.bool_):
        if isinstance(step, numbers.Integral):
            return int(step)
        dtype = getattr(step, "dtype", None)
        if getattr(step, "shape", None) == () and dtype is not None:
            if np.issubdtype(dtype, np.integer):
                return int(step)
    raise ValueError(
        f"step must be an integer (a Python or NumPy integer or a 0-d integer array), got "
        f"{step!r} of type {type(step).__name__}"
    )


def _checked_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """``metadata`` as it will be written (see :meth:`Checkpointer.save`); raises before
    anything is written, instead of inside Orbax's writer half-way through a save."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a mapping, got {type(metadata).__name__}")
    reserved = sorted(k for k in _RESERVED_META if k in metadata)
    if reserved:
        raise ValueError(
            f"metadata may not use the keys {reserved}: save() writes them itself (the real "
            f"step and process count); rename them"
        )
    try:
        return json.loads(json.dumps(to_jsonable(dict(metadata)), allow_nan=False))
    except (TypeError, ValueError) as err:
        raise TypeError(f"checkpoint metadata is not JSON-serialisable: {err}") from err


def _numbers_as_python(tree: Any) -> Any:
    """NumPy scalar leaves (``np.float32(2.5)``) as the Python numbers they hold: Orbax
    stores Python numbers, not NumPy scalars."""
    return jax.tree.map(lambda x: x.item() if isinstance(x, np.generic) else x, tree)


def _handlers() -> dict[str, ocp.CheckpointHandler]:
    return {_STATE: ocp.StandardCheckpointHandler(), _META: ocp.JsonCheckpointHandler()}


def _key_str(key: Any) -> str:
    """Orbax's name for one step of a key path (``a.0.mu.w``)."""
    for attr in ("key", "idx", "name"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _x64_hint(saved_shape: Any, saved_dtype: Any, shape: Any, dtype: Any) -> str:
    """A clause naming ``jax_enable_x64`` when two leaves differ only in 32 vs 64-bit width
    of the same kind of number (float32 vs float64, int32 vs int64), else ``""``."""
    a, b = np.dtype(saved_dtype), np.dtype(dtype)
    x64_pair = [8, 16] if a.kind == "c" else [4, 8]
    if (
        tuple(saved_shape) != tuple(shape)
        or a.kind != b.kind
        or a.kind not in "fiuc"
        or sorted((a.itemsize, b.itemsize)) != x64_pair
    ):
        return ""
    then, now = ("off", "on") if b.itemsize > a.itemsize else ("on", "off")
    return (
        f" (only the width differs: jax_enable_x64 may have been {then} at save time and "
        f"is {now} now)"
    )


def _check_like(restored: Any, target: Any, step: int) -> None:
    """Raise ValueError unless ``restored`` has ``target``'s tree, shapes and dtypes."""
    if jax.tree.structure(restored) != jax.tree.structure(target):
        raise ValueError(
            f"checkpoint step {step}: restored tree {jax.tree.structure(restored)} differs from "
            f"target {jax.tree.structure(target)}"
        )
    flat, _ = jax.tree_util.tree_flatten_with_path(restored)
    for (path, got), want in zip(flat, jax.tree.leaves(target), strict=True):
        if not hasattr(want, "shape"):
            continue
        if (got.shape, got.dtype) != (want.shape, want.dtype):
            hint = _x64_hint(got.shape, got.dtype, want.shape, want.dtype)
            raise ValueError(
                f"checkpoint step {step}: leaf {jax.tree_util.keystr(path)} has "
                f"{got.dtype}{list(got.shape)}, target wants {want.dtype}{list(want.shape)}{hint}"
            )
