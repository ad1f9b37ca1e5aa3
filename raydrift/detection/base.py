"""The drift-detector protocol and the base class that wraps a River detector.

raydrift keeps River's tiny protocol: :meth:`DriftDetector.update` mutates, the properties
:attr:`~DriftDetector.drift_detected` and :attr:`~DriftDetector.warning_detected` read. Detectors wrap
River rather than re-implement it; the wrapper adds what a distributed run needs: validated
constructor arguments (one-line config errors), ``state_dict()`` / ``load_state_dict()`` and
``reset()``.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np

from raydrift.plain_state import StateError, check_plain, from_plain, to_plain

__all__ = ["ControlChart", "DriftDetector", "InvalidParam", "NativeDetector", "RiverDetector", "check_param"]


class InvalidParam(ValueError):
    """A constructor argument has a value the detector cannot use.

    Attributes
    ----------
    param : str
        The argument's name (the config key under ``drift_detection.params``).
    """

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"'{param}' {message}")
        self.param = param
        self.reason = message


def check_param(name: str, ok: bool, expected: str, value: Any) -> None:
    """Raise :class:`InvalidParam` for ``name`` unless ``ok``.

    Parameters
    ----------
    name : str
        The constructor argument.
    ok : bool
        Whether the value is acceptable.
    expected : str
        What a valid value looks like, e.g. ``"a number in (0, 1)"``.
    value : Any
        The value given (shown in the message).
    """
    if not ok:
        raise InvalidParam(name, f"expects {expected}, got {value!r}")


def feed_with_warnings(flags: Any, update: Any, values: list[float], in_zone: bool) -> tuple[int, int, bool]:
    """Feed ``values`` to ``update`` until an alarm, tracking warning zones by the engine's rule on
    ``flags.drift_detected`` / ``flags.warning_detected`` (a raydrift detector, or the River object it
    wraps, for the fast path): see :meth:`DriftDetector.update_many_warnings`."""
    opened = 0
    for i, x in enumerate(values):
        update(x)
        drift = flags.drift_detected
        if flags.warning_detected:
            if not in_zone:
                in_zone, opened = True, opened + 1
        elif in_zone and not drift:
            in_zone = False
        if drift:
            return i, opened, in_zone
    return -1, opened, in_zone


class DriftDetector:
    """Base class of raydrift's drift detectors: River's protocol plus state round-trips.

    Subclasses set ``name`` (their registry name), store every constructor argument under the same
    public attribute name (so :meth:`params` and cloning come for free) and implement
    :meth:`update`, :attr:`drift_detected`, :meth:`reset`, :meth:`state_dict` and
    :meth:`load_state_dict`. A new detector is one file in ``raydrift/detection/`` plus one entry in
    :data:`raydrift.detection.DETECTOR_REGISTRY`.

    The value given to :meth:`update` is the quantity whose *increase* means "worse" (the engine feeds
    ``1 - accuracy`` for a higher-is-better metric); whether a detector also flags decreases is its own
    business, the engine filters improvements when ``direction: degrade``.
    """

    name: ClassVar[str] = ""
    #: A baseline (``periodic``, ``never``) ignores the values: generic tests do not expect it to
    #: detect a change, benchmarks print it next to the real detectors.
    baseline: ClassVar[bool] = False
    #: The values it can take (see :mod:`raydrift.detection.domains`): ``binary`` (0/1 errors),
    #: ``probability`` (values in [0, 1]) or ``real``. Read it through :attr:`input_domain`, which a
    #: detector whose domain depends on its parameters (``ensemble``, ``bocpd``) overrides.
    domain: ClassVar[str] = "real"

    #: The flags :attr:`drift_detected` and :attr:`warning_detected` read, shared by every detector
    #: (River's habit): :meth:`update` sets them, :meth:`reset` clears them.
    _drift: bool = False
    _warning: bool = False
    #: Whether it can raise warnings: the engine then checks :attr:`warning_detected` after every value.
    has_warnings: ClassVar[bool] = False
    #: Values after a (re)start during which its alarms are not trusted (``drift_detection.warmup_samples``
    #: null uses this): a detector that estimates its reference from few values raises early false alarms.
    warmup: ClassVar[int] = 0

    @property
    def input_domain(self) -> str:
        """The values this detector can take: ``binary``, ``probability`` or ``real``."""
        return self.domain

    @property
    def two_sided(self) -> bool:
        """Whether it alarms on decreases of the fed value as well as increases (``direction: any``
        pairs a one-sided detector with a twin fed ``1 - x``)."""
        return True

    def configure_for_domain(self, domain: str) -> None:
        """Told by the engine which values it will be fed (a detector with an ``auto`` setting picks
        its model here). Default: nothing to do."""

    @property
    def values_since_change(self) -> int | None:
        """Values fed since the change point behind the last alarm, that value included; None when the
        detector does not locate changes (the engine then locates them itself)."""
        return None

    @property
    def change_probability(self) -> float:
        """The detector's probability that the located change is real (NaN when it gives none)."""
        return float("nan")

    def update_many(self, values: list[float]) -> int:
        """Feed ``values`` in order until one raises an alarm: its index, or -1 when none did.

        The engine's per-sample path for detectors without warnings; the values after an alarm are
        not fed.
        """
        update = self.update
        for i, x in enumerate(values):
            update(x)
            if self.drift_detected:
                return i
        return -1

    def update_many_warnings(self, values: list[float], in_zone: bool) -> tuple[int, int, bool]:
        """:meth:`update_many` for a detector with warnings, tracking the warning zone on the way.

        ``in_zone``: whether a warning zone is open before the first value. A zone opens on a value
        that raises a warning while none is open, and closes on a value that raises neither a
        warning nor an alarm (the engine's rule). Returns ``(index of the first alarm or -1, zones
        opened, whether a zone is open after the last value fed)``.
        """
        return feed_with_warnings(self, self.update, values, in_zone)

    def update(self, x: Any) -> None:
        """Feed one value; afterwards :attr:`drift_detected` says whether it raised an alarm.

        ``x`` is a number; the two-sample (label-free) detectors also take a 1-D array (one sample's
        features).
        """
        raise NotImplementedError

    @property
    def drift_detected(self) -> bool:
        """Whether the last :meth:`update` raised a drift alarm (a subclass sets ``self._drift``, as
        River's detectors set ``_drift_detected``)."""
        return self._drift

    @property
    def warning_detected(self) -> bool:
        """Whether the last :meth:`update` raised a warning (``self._warning``; False for detectors
        without warnings)."""
        return self._warning

    def reset(self) -> None:
        """Forget everything seen: the detector is as freshly constructed."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly where this detector is, as *plain* values only
        (:func:`raydrift.plain_state.check_plain`: numbers, str, lists, dicts with str keys, tensors;
        :func:`raydrift.plain_state.to_plain` converts numpy arrays, deques, generators, ...)."""
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state produced by :meth:`state_dict` of a detector of the same class.

        The state may come from a file: check every field before use and raise
        :class:`raydrift.plain_state.StateError` (a ``ValueError``, one line naming the field) for
        anything this detector would not have written. Never unpickle or call anything it names.
        """
        raise NotImplementedError

    def _check_state_header(self, state: Any, keys: set[str]) -> None:
        """``state`` is a plain dict of this detector (its ``name``) with exactly ``keys``."""
        check_plain(state, f"state of detector '{self.name}'")
        if type(state) is not dict or state.get("name") != self.name:
            got = state.get("name") if type(state) is dict else type(state).__name__
            raise StateError(f"state of detector '{got}' loaded into '{self.name}'")
        if set(state) != keys:
            raise StateError(f"state of detector '{self.name}' has fields {sorted(state)}, expected {sorted(keys)}")

    def _load_params(self, params: Any) -> None:
        """Set the constructor arguments saved in a state, after checking their names and types."""
        where = f"state of detector '{self.name}'['params']"
        if type(params) is not dict or set(params) != set(self.param_names()):
            raise StateError(f"{where}: expected the parameters {self.param_names()}")
        values = from_plain(params, where)
        for key, value in values.items():
            _check_compatible(value, getattr(self, key), f"{where}[{key!r}]")
        try:  # the constructor's own checks: values it would refuse are refused here too
            type(self)(**values)
        except (ValueError, TypeError) as exc:
            raise StateError(f"{where}: not valid parameters ({str(exc)[:200]})") from None
        for key, value in values.items():
            setattr(self, key, value)

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        """Constructor kwargs the generic test suite builds this detector with."""
        yield {}

    @classmethod
    def param_names(cls) -> list[str]:
        """Names of the constructor arguments (the valid keys of ``drift_detection.params``)."""
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p != "self"]

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        """Constructor arguments and their defaults (``inspect.Parameter.empty`` where none)."""
        sig = inspect.signature(cls.__init__)
        return {k: p.default for k, p in sig.parameters.items() if k != "self"}

    def params(self) -> dict[str, Any]:
        """The constructor arguments this detector was built with."""
        return {k: getattr(self, k) for k in self.param_names()}

    def clone(self) -> DriftDetector:
        """A fresh detector with the same constructor arguments."""
        return type(self)(**self.params())

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


def _check_compatible(value: Any, current: Any, where: str) -> None:
    """A value read from a state may replace ``current``: the same type, a number for a number, or
    either is None."""
    numbers = (int, float, np.number, np.bool_)
    if type(value) is type(current) or value is None or current is None:
        return
    if isinstance(value, numbers) and isinstance(current, numbers):
        return
    raise StateError(f"{where}: a {type(value).__name__}, expected a {type(current).__name__}")


class RiverDetector(DriftDetector):
    """A :class:`DriftDetector` that wraps a River detector class (``river_cls``).

    Subclasses declare their constructor with explicit, documented arguments (River's names and
    defaults), validate them with :func:`check_param`, store each under the same attribute name and
    call :meth:`_build`. The River object is rebuilt from :meth:`river_params` on :meth:`reset`.

    The state is the constructor arguments plus the River object as plain values
    (:mod:`raydrift.detection.river_state`: its attributes, and only River classes of an exact table
    are rebuilt), so a checkpoint altered on disk cannot run code.
    """

    river_cls: ClassVar[type[Any]]

    def _build(self) -> None:
        self._river = self.river_cls(**self.river_params())

    def river_params(self) -> dict[str, Any]:
        """Keyword arguments for ``river_cls`` (default: every constructor argument)."""
        return self.params()

    @property
    def river(self) -> Any:
        """The wrapped River detector (read-only use: its window, estimation, ...)."""
        return self._river

    def update(self, x: float) -> None:
        self._river.update(x)

    def update_many(self, values: list[float]) -> int:
        if type(self).update is not RiverDetector.update:  # a wrapper that transforms its input
            return super().update_many(values)
        river = self._river
        update = river.update  # River's own methods in a tight loop: no wrapper call per value
        for i, x in enumerate(values):
            update(x)
            if river.drift_detected:
                return i
        return -1

    def update_many_warnings(self, values: list[float], in_zone: bool) -> tuple[int, int, bool]:
        if type(self).update is not RiverDetector.update:  # a wrapper that transforms its input
            return super().update_many_warnings(values, in_zone)
        return feed_with_warnings(self._river, self._river.update, values, in_zone)

    @property
    def drift_detected(self) -> bool:
        return bool(self._river.drift_detected)

    @property
    def warning_detected(self) -> bool:
        return bool(getattr(self._river, "warning_detected", False))

    def reset(self) -> None:
        self._build()

    def state_dict(self) -> dict[str, Any]:
        from raydrift.detection.river_state import river_to_plain

        where = f"detector '{self.name}'"
        return {"name": self.name, "params": to_plain(self.params(), where), "river": river_to_plain(self._river, where)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from raydrift.detection.river_state import river_from_plain

        self._check_state_header(state, {"name", "params", "river"})
        river = river_from_plain(state["river"], f"state of detector '{self.name}'['river']", template=self._river)
        self._load_params(state["params"])
        self._river = river


class NativeDetector(DriftDetector):
    """A :class:`DriftDetector` implemented in raydrift itself (no River class behind it).

    Subclasses store every constructor argument under the same public name and keep all mutable
    state in ``_private`` attributes set by :meth:`reset` (which ``__init__`` calls after validating
    the arguments). :meth:`state_dict` is then a deep copy of those private attributes, so saving and
    restoring needs no code in the subclass. Like River's detectors, a native detector resets itself
    on the update that follows an alarm. The private attributes must have a plain form
    (:func:`raydrift.plain_state.to_plain`: numbers, str, lists, dicts, tuples, deques, numpy arrays
    and generators, ``random.Random``).
    """

    def _state_keys(self) -> list[str]:
        return sorted(k for k in vars(self) if k.startswith("_"))

    def state_dict(self) -> dict[str, Any]:
        where = f"detector '{self.name}'"
        return {
            "name": self.name,
            "params": to_plain(self.params(), where),
            "state": {k: to_plain(getattr(self, k), f"{where}.{k}") for k in self._state_keys()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._check_state_header(state, {"name", "params", "state"})
        where = f"state of detector '{self.name}'['state']"
        saved = state["state"]
        if type(saved) is not dict or set(saved) != set(self._state_keys()):
            raise StateError(f"{where}: expected the attributes {self._state_keys()}")
        values = {k: from_plain(v, f"{where}[{k!r}]") for k, v in saved.items()}
        for key, value in values.items():
            _check_compatible(value, getattr(self, key), f"{where}[{key!r}]")
        self._load_params(state["params"])
        for key, value in values.items():
            setattr(self, key, value)


CHART_MODES = ("up", "both")


class ControlChart(NativeDetector):
    """A control chart on standardized values (CUSUM, EWMA): the shared burn-in and parameter checks.

    Until the in-control mean and standard deviation are known (given as ``target`` and ``sigma``, or
    estimated by :func:`estimate_mean_std` from the first ``min_instances`` values), values only feed
    the estimate. Subclasses call :meth:`_check_chart_params` in ``__init__``, :meth:`_reset_burn_in`
    in ``reset`` and :meth:`_burn_in` first in ``update``.
    """

    has_warnings: ClassVar[bool] = True
    threshold: float
    warning_threshold: float
    min_instances: int
    target: float | None
    sigma: float | None
    min_sigma: float
    mode: str

    @staticmethod
    def _check_chart_params(
        threshold: float,
        warning_threshold: float,
        min_instances: int,
        sigma: float | None,
        min_sigma: float,
        mode: str,
    ) -> None:
        check_param("threshold", threshold > 0.0, "a number > 0", threshold)
        check_param(
            "warning_threshold",
            0.0 < warning_threshold <= threshold,
            f"a number in (0, threshold={threshold}]",
            warning_threshold,
        )
        check_param("min_instances", min_instances >= 1, "an integer >= 1", min_instances)
        check_param("sigma", sigma is None or sigma > 0.0, "null or a number > 0", sigma)
        check_param("min_sigma", min_sigma > 0.0, "a number > 0", min_sigma)
        check_param("mode", mode in CHART_MODES, f"one of {', '.join(CHART_MODES)}", mode)

    def _reset_burn_in(self) -> None:
        self._n = 0
        self._sum = 0.0
        self._sum_sq = 0.0
        self._binary = True
        known = self.target is not None and self.sigma is not None
        self._mu: float | None = self.target if known else None
        self._sd: float | None = self.sigma if known else None
        self._drift = False
        self._warning = False

    @property
    def two_sided(self) -> bool:
        return self.mode == "both"

    def _burn_in(self, x: float) -> bool:
        """Count ``x``; True if it went to the in-control estimate (the chart must not use it)."""
        self._n += 1
        if self._mu is not None:
            return False
        self._sum += x
        self._sum_sq += x * x
        self._binary = self._binary and x in (0.0, 1.0)
        if self._n >= self.min_instances:  # the burn-in ends with the min_instances-th value
            mean, sd = estimate_mean_std(self._n, self._sum, self._sum_sq, self._binary, self.min_sigma)
            self._mu = self.target if self.target is not None else mean
            self._sd = self.sigma if self.sigma is not None else sd
        return True


def estimate_mean_std(
    n: int, total: float, total_sq: float, binary: bool, min_sigma: float
) -> tuple[float, float]:
    """In-control mean and standard deviation estimated from a burn-in of ``n`` values.

    Used by the control charts (CUSUM, EWMA) when the in-control mean or standard deviation is not
    given. For a burn-in of 0/1 values (``binary``: the per-sample error indicator) the error rate
    gets one pseudo-error and one pseudo-success (Laplace's rule), so a burn-in without any error
    still gives a usable, non-zero standard deviation ``sqrt(p (1 - p))``. Otherwise the sample
    standard deviation, floored at ``min_sigma``.

    Parameters
    ----------
    n : int
        Number of burn-in values (>= 1).
    total, total_sq : float
        Their sum and sum of squares.
    binary : bool
        Whether every burn-in value was 0 or 1.
    min_sigma : float
        Floor of the standard deviation for non-binary values.

    Returns
    -------
    tuple of float
        ``(mean, std)``.

    Examples
    --------
    >>> estimate_mean_std(98, 0.0, 0.0, binary=True, min_sigma=0.0)
    (0.01, 0.099498743710662)
    >>> estimate_mean_std(4, 6.0, 10.0, binary=False, min_sigma=0.0)  # 1, 1, 2, 2
    (1.5, 0.5773502691896257)
    """
    if binary:
        p = (total + 1.0) / (n + 2.0)
        return p, float(p * (1.0 - p)) ** 0.5
    mean = total / n
    var = max(0.0, (total_sq - n * mean * mean) / (n - 1)) if n > 1 else 0.0
    return mean, max(var**0.5, min_sigma)
