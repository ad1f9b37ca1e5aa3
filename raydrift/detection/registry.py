"""Detector registry: build a detector from its config name and parameters, with one-line errors."""

from __future__ import annotations

import difflib
import inspect
import typing
from typing import Any

from pydantic import TypeAdapter, ValidationError

from raydrift.detection.base import DriftDetector, InvalidParam
from raydrift.detection.domains import DOMAIN_TEXT
from raydrift.errors import ConfigError
from raydrift.registry import resolve

__all__ = ["DETECTOR_REGISTRY", "list_detectors", "make_detector", "resolve_detector"]

DETECTOR_REGISTRY: dict[str, str] = {
    "adwin": "raydrift.detection.adwin:ADWINDetector",
    "bocpd": "raydrift.detection.bocpd:BOCPDDetector",
    "bocpd_trend": "raydrift.detection.bocpd_trend:TrendBOCPDDetector",
    "cusum": "raydrift.detection.cusum:CUSUMDetector",
    "ddm": "raydrift.detection.ddm:DDMDetector",
    "eddm": "raydrift.detection.eddm:EDDMDetector",
    "ensemble": "raydrift.detection.ensemble:EnsembleDetector",
    "ewma": "raydrift.detection.ewma:EWMADetector",
    "fhddm": "raydrift.detection.fhddm:FHDDMDetector",
    "hddm_a": "raydrift.detection.hddm_a:HDDMADetector",
    "hddm_w": "raydrift.detection.hddm_w:HDDMWDetector",
    "ks": "raydrift.detection.ks:KSDetector",
    "kswin": "raydrift.detection.kswin:KSWINDetector",
    "mmd": "raydrift.detection.mmd:MMDDetector",
    "never": "raydrift.detection.never:NeverDetector",
    "page_hinkley": "raydrift.detection.page_hinkley:PageHinkleyDetector",
    "periodic": "raydrift.detection.periodic:PeriodicDetector",
}
"""Registry name -> ``module:Class``. A new detector is one file plus one entry here."""

_WHERE = "drift_detection.detector"


def resolve_detector(name: str) -> type[DriftDetector]:
    """The detector class named by ``name``: a registry name or ``package.module:ClassName``.

    Raises
    ------
    ConfigError
        One line naming the closest registered name, or what is wrong with a dotted path.
    """
    return resolve(
        name, DETECTOR_REGISTRY, DriftDetector, _WHERE, base_name="raydrift.detection.DriftDetector", cutoff=0.4
    )


def _type_hints(cls: type[DriftDetector]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls.__init__)
    except Exception:  # an unresolvable annotation in a user's detector: skip type coercion
        return {}


def make_detector(name: str, params: dict[str, Any] | None = None, seed: int = 0) -> DriftDetector:
    """A new detector: ``name`` from the registry (or a dotted path), built with ``params``.

    Parameters
    ----------
    name : str
        Registry name (see :data:`DETECTOR_REGISTRY`) or ``package.module:ClassName``.
    params : dict, optional
        Constructor arguments (``drift_detection.params``). Values are coerced to the annotated type
        where that is lossless (``"1e-3"`` from YAML becomes ``0.001``).
    seed : int
        Passed as ``seed`` to detectors that take one, unless ``params`` sets it.

    Raises
    ------
    ConfigError
        Unknown name (names the closest), unknown parameter (names the closest and the valid ones), or
        a value of the wrong type or out of range (names the parameter and the valid ones).
    """
    cls = resolve_detector(name)
    given = dict(params or {})
    valid = cls.param_names()
    where = f"drift_detection.params for detector '{name}'"
    valid_txt = f"valid params: {', '.join(valid) if valid else '(none)'}"
    for key in given:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ConfigError(f"unknown key '{key}' in {where}: {hint}{valid_txt}")
    hints = _type_hints(cls)
    for key, value in list(given.items()):
        hint_type = hints.get(key)
        if hint_type is None:
            continue
        try:
            given[key] = TypeAdapter(hint_type).validate_python(value)
        except ValidationError:
            tname = getattr(hint_type, "__name__", str(hint_type))
            raise ConfigError(
                f"{where}: '{key}' expects {tname}, got {value!r} ({type(value).__name__}); {valid_txt}"
            ) from None
    if "seed" in valid and "seed" not in given:
        given["seed"] = seed
    try:
        return cls(**given)
    except InvalidParam as exc:
        raise ConfigError(f"{where}: '{exc.param}' {exc.reason}; {valid_txt}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: invalid parameters ({exc}); {valid_txt}") from None


def list_detectors() -> list[tuple[str, dict[str, Any], str]]:
    """Every registered detector: ``(name, params with defaults, description)``.

    The description is the first line of its docstring and the values it takes at its defaults.
    """
    out = []
    for name in sorted(DETECTOR_REGISTRY):
        cls = resolve_detector(name)
        defaults = {k: (None if v is inspect.Parameter.empty else v) for k, v in cls.default_params().items()}
        doc = (inspect.getdoc(cls) or "").strip().splitlines()
        takes = DOMAIN_TEXT[make_detector(name, {}).input_domain]
        out.append((name, defaults, f"{doc[0] if doc else ''} Takes {takes}."))
    return out
