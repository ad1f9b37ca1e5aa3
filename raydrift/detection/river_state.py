"""A River detector's state as plain values (:mod:`raydrift.plain_state`), without pickle.

River's detectors have no state format of their own. :func:`river_to_plain` walks the detector's
``__dict__`` and the River helper objects in it (ADWIN's compiled window, ``river.stats`` objects,
HDDM_W's ``SampleInfo``, KSWIN's ``random.Random`` and deque, Page-Hinkley's bound test method) and
writes each River object as ``{"__kind__": "river", "class": "module.QualName", "attrs": {...}}``.

:func:`river_from_plain` rebuilds only the classes of :data:`RIVER_CLASSES`, an exact table of
``(module, qualified name)`` built from imported classes: a Python class is made with
``object.__new__`` and given its attribute values; River's compiled (Rust) classes are made with
their numeric constructor arguments and their serialized bytes (``__setstate__``, parsed by Rust's
serde, which builds data, not objects). A bound method is allowed only as one of the methods of
:data:`RIVER_METHODS` of the object that holds it. No name in the data is ever imported, looked up
as an attribute of a module, or called.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from river import drift, stats
from river._river_rust import drift as rust_drift
from river._river_rust import stats as rust_stats
from river.drift import binary
from river.drift.binary import hddm_w

from raydrift._stderr import quiet_stderr
from raydrift.plain_state import KIND, StateError, from_plain, to_plain

__all__ = ["RIVER_CLASSES", "RIVER_METHODS", "river_from_plain", "river_to_plain"]


def _key(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


_PY_CLASSES: list[type] = [
    drift.ADWIN,
    drift.KSWIN,
    drift.PageHinkley,
    binary.DDM,
    binary.EDDM,
    binary.FHDDM,
    binary.HDDMA,
    binary.HDDMW,
    hddm_w.SampleInfo,
    stats.Mean,
    stats.Var,
    stats.EWMean,
]
#: River's compiled classes: rebuilt from numeric constructor arguments and their own serialized bytes
_NATIVE_CLASSES: list[type] = [rust_drift.AdaptiveWindowing, rust_stats.RsEWMean]

#: The River classes a state may hold, by ``module.QualName`` (an exact table: no prefixes)
RIVER_CLASSES: dict[str, type] = {_key(c): c for c in _PY_CLASSES + _NATIVE_CLASSES}
#: Bound methods a River object may hold in an attribute: ``{class: {attribute: allowed method names}}``
RIVER_METHODS: dict[str, dict[str, frozenset[str]]] = {
    _key(drift.PageHinkley): {"_test_drift": frozenset({"_test_increase", "_test_decrease", "_test_both"})},
}
#: Largest serialized state of a compiled River object, in bytes
MAX_NATIVE_BYTES = 64 << 20


def _encode(value: Any, where: str) -> Any:
    """The ``to_plain`` fallback: River objects of the table; anything else is refused."""
    key = _key(type(value))
    if key not in RIVER_CLASSES:
        raise StateError(f"{where}: is a {key}, which a detector state cannot hold")
    if type(value) in _NATIVE_CLASSES:
        args = list(value.__getnewargs__())
        return {KIND: "river_native", "class": key, "args": to_plain(args, where), "state": to_plain(value.__getstate__(), where)}
    methods = RIVER_METHODS.get(key, {})
    attrs: dict[str, Any] = {}
    for name, v in vars(value).items():
        if name in methods and getattr(v, "__self__", None) is value:
            attrs[name] = {KIND: "method", "name": v.__name__}
        else:
            attrs[name] = to_plain(v, f"{where}.{name}", _encode)
    return {KIND: "river", "class": key, "attrs": attrs}


def river_to_plain(obj: Any, where: str = "river") -> dict[str, Any]:
    """A River detector (or helper object of :data:`RIVER_CLASSES`) as plain values."""
    return _encode(obj, where)


def _native_from_plain(value: dict[str, Any], cls: type, where: str) -> Any:
    args, state = value.get("args"), from_plain(value.get("state"), f"{where}['state']")
    if type(args) is not list or not all(type(a) in (int, float, bool) for a in args) or len(args) > 16:
        raise StateError(f"{where}['args']: expected a list of numbers")
    if type(state) is not bytes or len(state) > MAX_NATIVE_BYTES:
        raise StateError(f"{where}['state']: expected bytes (at most {MAX_NATIVE_BYTES})")
    try:
        with quiet_stderr():  # a Rust panic prints its message and backtrace on fd 2
            obj: Any = cls.__new__(cls, *args)
            obj.__setstate__(state)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - Rust's parser refused the bytes (a PanicException)
        raise StateError(f"{where}: not a valid {cls.__qualname__} state ({type(exc).__name__})") from None
    return obj


def _method_from_plain(obj: Any, key: str, name: str, value: Any, where: str) -> Any:
    allowed = RIVER_METHODS.get(key, {}).get(name, frozenset())
    method = value.get("name")
    if set(value) != {KIND, "name"} or method not in allowed:
        raise StateError(f"{where}.{name}: method {method!r:.40} is not one {key}.{name} may hold")
    return getattr(obj, method)


def _decode(value: dict[str, Any], where: str) -> Any:
    """The ``from_plain`` fallback: River objects of the table."""
    kind, key = value[KIND], value.get("class")
    cls = RIVER_CLASSES.get(key) if isinstance(key, str) else None
    if kind not in ("river", "river_native") or cls is None or not isinstance(key, str):
        raise StateError(f"{where}: a {kind!r:.40} of class {key!r:.80} is not a River class raydrift rebuilds")
    if kind == "river_native" or cls in _NATIVE_CLASSES:
        if kind != "river_native" or cls not in _NATIVE_CLASSES or set(value) != {KIND, "class", "args", "state"}:
            raise StateError(f"{where}: malformed state of {key}")
        return _native_from_plain(value, cls, where)
    attrs = value.get("attrs")
    if set(value) != {KIND, "class", "attrs"} or type(attrs) is not dict:
        raise StateError(f"{where}: malformed state of {key}")
    obj: Any = object.__new__(cls)
    built: dict[str, Any] = {}
    for name, v in attrs.items():
        if not name.isidentifier() or name.startswith("__"):
            raise StateError(f"{where}: attribute name {name!r:.40} is not allowed")
        if type(v) is dict and v.get(KIND) == "method":
            built[name] = _method_from_plain(obj, key, name, v, where)
        else:
            built[name] = from_plain(v, f"{where}.{name}", _decode)
    obj.__dict__.update(built)
    return obj


def river_from_plain(state: Any, where: str = "river", template: Any = None) -> Any:
    """Rebuild a River object from :func:`river_to_plain`'s output.

    Parameters
    ----------
    state
        The plain state.
    where : str
        The field's name for error messages.
    template : optional
        A River object of the expected class (the detector's fresh one): the rebuilt object must be of
        its class and have its attributes, with values of compatible types, recursively.

    Raises
    ------
    StateError
        One line naming the field: not plain, a class outside :data:`RIVER_CLASSES`, a method outside
        :data:`RIVER_METHODS`, a malformed field, or (with ``template``) another class or attributes.
    """
    if type(state) is not dict or state.get(KIND) not in ("river", "river_native"):
        raise StateError(f"{where}: expected the state of a River detector")
    obj = from_plain(state, where, _decode)
    if template is not None:
        _check_like(obj, template, where)
    return obj


def _check_like(value: Any, template: Any, where: str, depth: int = 0) -> None:
    """``value`` has ``template``'s class and, for River's Python objects, the same attributes with
    values of compatible types (the same type, numbers for numbers, or None on either side), recursively."""
    numbers = (int, float, np.number, np.bool_)
    if type(value) is type(template) or value is None or template is None:
        pass
    elif isinstance(value, numbers) and isinstance(template, numbers):
        return
    else:
        raise StateError(f"{where}: a {_key(type(value))}, expected a {_key(type(template))}")
    if type(template) not in _PY_CLASSES or value is None or depth > 8:
        return
    attrs, expected = vars(value), vars(template)
    if set(attrs) != set(expected):
        raise StateError(f"{where}: attributes {sorted(set(attrs) ^ set(expected))} differ from those of {_key(type(template))}")
    for name, v in attrs.items():
        _check_like(v, expected[name], f"{where}.{name}", depth + 1)
