"""Unpickling raydrift's own state with an allowlist, so a tampered checkpoint cannot run code.

River's detectors have no state format of their own, so a detector's state is pickled (see
:class:`raydrift.detection.base.RiverDetector`), and the detection engine's state holds numpy arrays
and raydrift's result dataclasses. When that state is read back from a checkpoint on disk (a path a
user or another process can write), :func:`safe_loads` only lets the pickle build objects of the
classes below: River's drift detectors and their helpers, numpy arrays, dtypes and generators,
raydrift's detection dataclasses and a few containers. Anything else (``os.system``,
``builtins.eval``, ...) raises :class:`UnsafePickleError` before it is called, the same defence as
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

__all__ = ["UnsafePickleError", "safe_loads"]

#: Modules whose every class may be built (River's detectors and the pure data structures they use).
_ALLOWED_MODULE_PREFIXES = ("river.drift.", "river.utils.rolling", "river.stats.", "river._river_rust.")
#: Individual globals allowed by (module, name).
_ALLOWED_GLOBALS = {
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "complex"),
    ("builtins", "slice"),
    ("builtins", "range"),
    ("builtins", "bytearray"),
    ("builtins", "float"),
    ("builtins", "int"),
    ("collections", "deque"),
    ("collections", "OrderedDict"),
    ("collections", "defaultdict"),
    ("copyreg", "_reconstructor"),
    ("builtins", "object"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.random._pickle", "__generator_ctor"),
    ("numpy.random._pickle", "__bit_generator_ctor"),
    ("numpy.random._pickle", "__randomstate_ctor"),
    ("numpy.random.bit_generator", "SeedSequence"),
    ("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence"),
    ("numpy.random._generator", "Generator"),
    ("numpy.random._pcg64", "PCG64"),
    ("numpy.random._mt19937", "MT19937"),
    ("random", "Random"),
    ("raydrift.detection.engine", "BatchResult"),
    ("raydrift.detection.engine", "IntervalRecord"),
    ("raydrift.detection.engine", "DriftEvent"),
}
_NUMPY_DTYPE_MODULES = ("numpy.dtypes",)


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asked for a global that is not on raydrift's allowlist."""


def _bound_method(obj: Any, name: str) -> Any:
    """``getattr`` as pickle uses it for a bound method (River's PageHinkley keeps one), limited to
    public or single-underscore methods of objects of an allowed class."""
    module = type(obj).__module__ or ""
    if name.startswith("__") or not module.startswith(_ALLOWED_MODULE_PREFIXES):
        raise UnsafePickleError(f"refusing getattr({type(obj).__name__}, {name!r}) while unpickling")
    value = getattr(obj, name)
    if getattr(value, "__self__", None) is not obj:
        raise UnsafePickleError(f"refusing getattr({type(obj).__name__}, {name!r}): not a bound method")
    return value


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("builtins", "getattr"):
            return _bound_method
        allowed = (
            (module, name) in _ALLOWED_GLOBALS
            or module.startswith(_ALLOWED_MODULE_PREFIXES)
            or (module in _NUMPY_DTYPE_MODULES and name.endswith("DType"))
        )
        if not allowed:
            raise UnsafePickleError(
                f"refusing to unpickle '{module}.{name}': not a type raydrift saves in its state "
                "(the file was not written by raydrift, or was altered)"
            )
        return super().find_class(module, name)


def safe_loads(data: bytes) -> Any:
    """``pickle.loads`` restricted to the allowlist in this module.

    Raises
    ------
    UnsafePickleError
        The data refers to a class or function outside the allowlist.
    """
    return _Unpickler(io.BytesIO(data)).load()
