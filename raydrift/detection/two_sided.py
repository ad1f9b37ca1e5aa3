"""A one-sided detector made two-sided: itself and a twin fed ``1 - x`` (``direction: any``)."""

from __future__ import annotations

from typing import Any, ClassVar

from raydrift.detection.base import DriftDetector

__all__ = ["TwoSidedDetector"]


class TwoSidedDetector(DriftDetector):
    """Alarms when ``detector`` alarms on the values or a twin of it alarms on ``1 - x``.

    River's binary detectors (``ddm``, ``eddm``, ``fhddm``, ``hddm_*`` without ``two_sided_test``) and
    the one-sided control charts flag increases only: with ``direction: any`` the engine wraps them in
    this class so that an improvement is a drift too. ``1 - x`` keeps 0/1 values 0/1 and values in
    [0, 1] in [0, 1]. Not registered: the engine builds it.

    Parameters
    ----------
    detector : DriftDetector
        The one-sided detector; its twin is ``detector.clone()``.
    """

    name: ClassVar[str] = "two_sided"

    def __init__(self, detector: DriftDetector) -> None:
        self.detector = detector
        self._up = detector
        self._down = detector.clone()
        self.has_warnings = detector.has_warnings  # type: ignore[misc]

    @classmethod
    def param_names(cls) -> list[str]:
        return ["detector"]

    def clone(self) -> DriftDetector:
        return TwoSidedDetector(self._up.clone())

    @property
    def input_domain(self) -> str:
        return self._up.input_domain

    @property
    def warmup(self) -> int:  # type: ignore[override]
        return self._up.warmup

    def configure_for_domain(self, domain: str) -> None:
        self._up.configure_for_domain(domain)
        self._down.configure_for_domain(domain)

    def update(self, x: Any) -> None:
        self._up.update(x)
        self._down.update(1.0 - x)

    @property
    def drift_detected(self) -> bool:
        return self._up.drift_detected or self._down.drift_detected

    @property
    def warning_detected(self) -> bool:
        return self._up.warning_detected or self._down.warning_detected

    def reset(self) -> None:
        self._up.reset()
        self._down.reset()

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "up": self._up.state_dict(), "down": self._down.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._check_state_header(state, {"name", "up", "down"})
        self._up.load_state_dict(state["up"])
        self._down.load_state_dict(state["down"])
