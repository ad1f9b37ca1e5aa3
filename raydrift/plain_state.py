"""State as plain values: what raydrift saves and reads back without pickle's code paths.

Detector and engine state travels to the driver and into the run's checkpoint
(``<run_dir>/checkpoint/state.pt``), a file a user or another process can write. It is kept as
*plain* values only: ``None``, ``bool``, ``int``, ``float``, ``str``, lists, dicts with ``str``
keys and CPU torch tensors, which ``torch.load(weights_only=True)`` reads without building any other
object. :func:`check_plain` refuses anything else with one line naming the field.

:func:`to_plain` turns the Python values detectors hold into that form, with a tagged dict (the
reserved key ``"__kind__"``) for each value that is not plain itself:

- ``ndarray``: ``{"__kind__": "ndarray", "dtype": "float64", "shape": [n], "data": tensor}``
  (numeric and boolean dtypes only);
- ``stacked``: a list or deque of arrays of one dtype and shape, as one tensor;
- ``npscalar`` (a numpy number), ``tuple``, ``deque`` (with its ``maxlen``), ``set``, ``dict``
  with non-``str`` keys (a list of pairs), ``bytes`` (a uint8 tensor);
- ``generator``: a ``numpy.random.Generator`` as its bit generator's name (from a fixed list) and
  state; ``random``: a ``random.Random`` as its state.

:func:`from_plain` rebuilds them, checking every tag's fields (types, dtype, shape) first, and
nothing else: it never imports a module or calls a callable named by the data.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

__all__ = ["KIND", "StateError", "check_plain", "from_plain", "to_plain"]

KIND = "__kind__"
#: numpy dtypes an array in the state may have (torch holds each of them)
ARRAY_DTYPES = (
    "bool",
    "uint8",
    "int8",
    "int16",
    "int32",
    "int64",
    "float16",
    "float32",
    "float64",
)
#: numpy bit generators a ``Generator`` in the state may use (built by this table, not by name lookup)
BIT_GENERATORS: dict[str, Callable[[], np.random.BitGenerator]] = {
    "PCG64": np.random.PCG64,
    "PCG64DXSM": np.random.PCG64DXSM,
    "MT19937": np.random.MT19937,
    "Philox": np.random.Philox,
    "SFC64": np.random.SFC64,
}
#: deepest nesting accepted (a hostile file cannot exhaust the stack)
MAX_DEPTH = 64
#: largest bytes/array payload accepted, in elements
MAX_ELEMENTS = 1 << 28
_SCALARS = (type(None), bool, int, float, str)


class StateError(ValueError):
    """A saved state is not plain, or does not have the fields it must have; one line naming the field."""


def _fail(where: str, why: str) -> StateError:
    return StateError(f"{where}: {why}")


def check_plain(value: Any, where: str = "state", depth: int = 0) -> None:
    """Refuse ``value`` unless it is plain: ``None``/``bool``/``int``/``float``/``str``, a list, a dict
    with ``str`` keys, a dense CPU tensor (no subclass, no gradient), nested at most
    :data:`MAX_DEPTH` deep.

    Raises
    ------
    StateError
        One line naming the first field that is not plain (``state['detector']['river'][3]``) and its type.
    """
    if depth > MAX_DEPTH:
        raise _fail(where, f"nested deeper than {MAX_DEPTH} levels")
    t = type(value)
    if t in _SCALARS:
        return
    if t is list:
        for i, v in enumerate(value):
            check_plain(v, f"{where}[{i}]", depth + 1)
        return
    if t is dict:
        for k, v in value.items():
            if type(k) is not str:
                raise _fail(where, f"has a key of type {type(k).__name__} ({k!r:.40}); only str keys are plain")
            check_plain(v, f"{where}[{k!r}]", depth + 1)
        return
    if t is torch.Tensor:
        if value.layout != torch.strided or value.device.type != "cpu" or value.requires_grad:
            raise _fail(where, "is a tensor that is not a dense CPU tensor without gradient")
        return
    raise _fail(where, f"is a {t.__module__}.{t.__qualname__}, not a plain value (numbers, str, lists, dicts, tensors)")


# --- to plain --------------------------------------------------------------------------------------
def _array_to_plain(a: np.ndarray, where: str) -> dict[str, Any]:
    dtype = a.dtype.name
    if dtype not in ARRAY_DTYPES:
        raise _fail(where, f"is an array of dtype {dtype}, which a state cannot hold")
    return {KIND: "ndarray", "dtype": dtype, "shape": list(a.shape), "data": torch.from_numpy(np.array(a, copy=True))}


def _stack(items: list[Any] | deque[Any]) -> dict[str, Any] | None:
    """A list or deque of arrays of one dtype and shape as one tensor (``stacked``): one tensor to
    save and load instead of one per array (a two-sample detector's window holds hundreds)."""
    first = items[0]
    if type(first) is not np.ndarray or first.dtype.name not in ARRAY_DTYPES:
        return None
    if not all(type(a) is np.ndarray and a.dtype == first.dtype and a.shape == first.shape for a in items):
        return None
    maxlen = items.maxlen if isinstance(items, deque) else None
    return {
        KIND: "stacked",
        "container": "deque" if isinstance(items, deque) else "list",
        "maxlen": maxlen,
        "dtype": first.dtype.name,
        "shape": list(first.shape),
        "data": torch.from_numpy(np.stack(list(items))),
    }


def _stacked_from_plain(value: dict[str, Any], where: str) -> list[np.ndarray] | deque[np.ndarray]:
    fields = {"container": (str,), "maxlen": (int, type(None)), "dtype": (str,), "shape": (list,), "data": (torch.Tensor,)}
    _fields(value, where, fields)
    data, maxlen = value["data"], value["maxlen"]
    if data.dim() < 1 or value["container"] not in ("list", "deque"):
        raise _fail(where, "is not a stacked list or deque of arrays")
    arr = _tensor_to_numpy(data, value["dtype"], [int(data.shape[0]), *value["shape"]], where)
    items = [a.copy() for a in arr]
    if value["container"] == "list":
        return items
    if maxlen is not None and not len(items) <= maxlen <= MAX_ELEMENTS:
        raise _fail(where, f"has an invalid maxlen {maxlen!r}")
    return deque(items, maxlen=maxlen)


def _generator_to_plain(g: np.random.Generator, where: str) -> dict[str, Any]:
    state = g.bit_generator.state
    if state.get("bit_generator") not in BIT_GENERATORS:
        raise _fail(where, f"uses bit generator {state.get('bit_generator')!r}, which a state cannot hold")
    return {KIND: "generator", "state": to_plain(state, where)}


def to_plain(value: Any, where: str = "state", fallback: Callable[[Any, str], Any] | None = None) -> Any:
    """``value`` as plain values (see the module docstring); ``fallback(value, where)`` converts
    objects this function does not know (River's, in :mod:`raydrift.detection.river_state`).

    Raises
    ------
    StateError
        A value that has no plain form (a function, an open file, an object without a fallback).
    """
    t = type(value)
    if t in _SCALARS:
        return value
    if (t is list or t is deque) and len(value) >= 2:
        stacked = _stack(value)
        if stacked is not None:
            return stacked
    if t is list:
        return [to_plain(v, f"{where}[{i}]", fallback) for i, v in enumerate(value)]
    if t is dict:
        if all(type(k) is str for k in value):
            if KIND in value:
                raise _fail(where, f"has the reserved key {KIND!r}")
            return {k: to_plain(v, f"{where}[{k!r}]", fallback) for k, v in value.items()}
        return {KIND: "dict", "items": [[to_plain(k, where, fallback), to_plain(v, f"{where}[{k!r}]", fallback)] for k, v in value.items()]}
    if t is tuple:
        return {KIND: "tuple", "items": [to_plain(v, f"{where}[{i}]", fallback) for i, v in enumerate(value)]}
    if t is deque:
        items = [to_plain(v, f"{where}[{i}]", fallback) for i, v in enumerate(value)]
        return {KIND: "deque", "maxlen": value.maxlen, "items": items}
    if t in (set, frozenset):
        return {KIND: "set", "items": [to_plain(v, where, fallback) for v in sorted(value, key=repr)]}
    if t is bytes:
        return {KIND: "bytes", "data": torch.frombuffer(bytearray(value), dtype=torch.uint8) if value else torch.zeros(0, dtype=torch.uint8)}
    if t is np.ndarray:
        return _array_to_plain(value, where)
    if isinstance(value, np.generic) and value.dtype.name in ARRAY_DTYPES:
        return {KIND: "npscalar", "dtype": value.dtype.name, "value": value.item()}
    if t is np.random.Generator:
        return _generator_to_plain(value, where)
    if t is random.Random:
        return {KIND: "random", "state": to_plain(value.getstate(), where)}
    if t is torch.Tensor:
        return value.detach().cpu().clone()
    if fallback is not None:
        return fallback(value, where)
    raise _fail(where, f"is a {t.__module__}.{t.__qualname__}, which has no plain form")


# --- from plain ------------------------------------------------------------------------------------
def _fields(value: dict[str, Any], where: str, names: dict[str, tuple[type, ...]]) -> None:
    """``value`` (a tagged dict) has exactly the fields ``names`` (plus the tag), of those types."""
    extra = sorted(set(value) - set(names) - {KIND})
    if extra:
        raise _fail(where, f"has unexpected fields {extra} for a {value[KIND]!r}")
    for name, types in names.items():
        if name not in value:
            raise _fail(where, f"misses the field {name!r} of a {value[KIND]!r}")
        if type(value[name]) not in types:
            raise _fail(f"{where}[{name!r}]", f"is a {type(value[name]).__name__}, expected {'/'.join(t.__name__ for t in types)}")


def _tensor_to_numpy(data: torch.Tensor, dtype: str, shape: list[Any], where: str) -> np.ndarray:
    if dtype not in ARRAY_DTYPES:
        raise _fail(where, f"has dtype {dtype!r}, not one of {', '.join(ARRAY_DTYPES)}")
    if not all(type(s) is int and s >= 0 for s in shape) or len(shape) > 32:
        raise _fail(where, f"has an invalid shape {shape!r:.80}")
    try:
        out = data.numpy()
    except (TypeError, RuntimeError):  # a dtype numpy has no equivalent of (bfloat16, ...)
        raise _fail(where, f"holds {data.dtype} data, not {dtype}") from None
    if out.dtype.name != dtype:
        raise _fail(where, f"holds {out.dtype.name} data for dtype {dtype}")
    if list(out.shape) != shape:
        raise _fail(where, f"holds data of shape {list(out.shape)} for shape {shape}")
    return np.array(out, copy=True)


def _array_from_plain(value: dict[str, Any], where: str) -> np.ndarray:
    _fields(value, where, {"dtype": (str,), "shape": (list,), "data": (torch.Tensor, list)})
    data = value["data"]
    if type(data) is list:  # {dtype, shape, data-list}
        if not all(type(x) in (bool, int, float) for x in data) or len(data) > MAX_ELEMENTS:
            raise _fail(f"{where}['data']", "is not a list of numbers")
        if value["dtype"] not in ARRAY_DTYPES:
            raise _fail(where, f"has dtype {value['dtype']!r}, not one of {', '.join(ARRAY_DTYPES)}")
        arr = np.array(data, dtype=value["dtype"])
        try:
            return arr.reshape(value["shape"])
        except (ValueError, TypeError):
            raise _fail(where, f"holds {arr.size} values for shape {value['shape']!r:.80}") from None
    return _tensor_to_numpy(data, value["dtype"], value["shape"], where)


def _generator_from_plain(value: dict[str, Any], where: str) -> np.random.Generator:
    _fields(value, where, {"state": (dict,)})
    state = _from_checked(value["state"], f"{where}['state']", None)
    name = state.get("bit_generator") if type(state) is dict else None
    if name not in BIT_GENERATORS:
        raise _fail(where, f"names bit generator {name!r:.40}, not one of {', '.join(BIT_GENERATORS)}")
    bitgen = BIT_GENERATORS[name]()
    try:
        bitgen.state = state
    except (ValueError, TypeError, KeyError) as exc:
        raise _fail(where, f"is not a valid {name} state ({exc})") from None
    return np.random.Generator(bitgen)


def _random_from_plain(value: dict[str, Any], where: str) -> random.Random:
    _fields(value, where, {"state": (dict,)})
    state = _from_checked(value["state"], f"{where}['state']", None)
    rng = random.Random()
    try:
        rng.setstate(state)
    except (ValueError, TypeError, OverflowError) as exc:
        raise _fail(where, f"is not a valid random.Random state ({exc})") from None
    return rng


def _npscalar_from_plain(value: dict[str, Any], where: str) -> Any:
    _fields(value, where, {"dtype": (str,), "value": (bool, int, float)})
    if value["dtype"] not in ARRAY_DTYPES:
        raise _fail(where, f"has dtype {value['dtype']!r}, not one of {', '.join(ARRAY_DTYPES)}")
    try:
        return np.array(value["value"], dtype=value["dtype"])[()]
    except (OverflowError, ValueError, TypeError):
        raise _fail(where, f"holds {value['value']!r:.40}, not a {value['dtype']}") from None


def _tagged_from_plain(value: dict[str, Any], where: str, fallback: Callable[[dict[str, Any], str], Any] | None) -> Any:
    kind = value[KIND]
    items = value.get("items")

    def rebuild_items() -> list[Any]:
        return [_from_checked(v, f"{where}[{i}]", fallback) for i, v in enumerate(items or [])]

    if kind == "tuple":
        _fields(value, where, {"items": (list,)})
        return tuple(rebuild_items())
    if kind == "deque":
        _fields(value, where, {"items": (list,), "maxlen": (int, type(None))})
        if value["maxlen"] is not None and not 0 <= value["maxlen"] <= MAX_ELEMENTS:
            raise _fail(where, f"has an invalid maxlen {value['maxlen']!r}")
        return deque(rebuild_items(), maxlen=value["maxlen"])
    if kind == "set":
        _fields(value, where, {"items": (list,)})
        try:
            return set(rebuild_items())
        except TypeError:
            raise _fail(where, "holds unhashable items") from None
    if kind == "dict":
        _fields(value, where, {"items": (list,)})
        out = {}
        for i, pair in enumerate(rebuild_items()):
            if type(pair) is not list or len(pair) != 2:
                raise _fail(f"{where}['items'][{i}]", "is not a [key, value] pair")
            try:
                out[pair[0]] = pair[1]
            except TypeError:
                raise _fail(f"{where}['items'][{i}]", "has an unhashable key") from None
        return out
    if kind == "bytes":
        _fields(value, where, {"data": (torch.Tensor,)})
        return _tensor_to_numpy(value["data"], "uint8", [int(value["data"].numel())], where).tobytes()
    if kind == "ndarray":
        return _array_from_plain(value, where)
    if kind == "stacked":
        return _stacked_from_plain(value, where)
    if kind == "npscalar":
        return _npscalar_from_plain(value, where)
    if kind == "generator":
        return _generator_from_plain(value, where)
    if kind == "random":
        return _random_from_plain(value, where)
    if fallback is not None:
        return fallback(value, where)
    raise _fail(where, f"has an unknown {KIND} {kind!r:.40}")


def from_plain(value: Any, where: str = "state", fallback: Callable[[dict[str, Any], str], Any] | None = None) -> Any:
    """Rebuild what :func:`to_plain` made, after :func:`check_plain`; ``fallback(tagged, where)``
    rebuilds the tags this module does not know.

    Raises
    ------
    StateError
        One line naming the field that is not plain, has an unknown tag, or a wrong type or shape.
    """
    check_plain(value, where)
    return _from_checked(value, where, fallback)


def _from_checked(value: Any, where: str, fallback: Callable[[dict[str, Any], str], Any] | None) -> Any:
    t = type(value)
    if t is list:
        return [_from_checked(v, f"{where}[{i}]", fallback) for i, v in enumerate(value)]
    if t is dict:
        if KIND in value:
            if type(value[KIND]) is not str:
                raise _fail(where, f"has a non-str {KIND}")
            return _tagged_from_plain(value, where, fallback)
        return {k: _from_checked(v, f"{where}[{k!r}]", fallback) for k, v in value.items()}
    if t is torch.Tensor:
        return value.clone()
    return value
