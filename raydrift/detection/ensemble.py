"""Ensemble: several named detectors vote (any / majority / all / weighted)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

from raydrift.detection.base import DriftDetector, InvalidParam, check_param
from raydrift.detection.domains import narrowest
from raydrift.errors import ConfigError
from raydrift.plain_state import StateError, to_plain

__all__ = ["EnsembleDetector"]

VOTINGS = ("any", "majority", "all", "weighted")


def _member_spec(i: int, spec: Any) -> tuple[str, dict[str, Any]]:
    if isinstance(spec, str):
        return spec, {}
    if (
        isinstance(spec, dict)
        and isinstance(spec.get("detector"), str)
        and set(spec) <= {"detector", "params"}
    ):
        params = spec.get("params") or {}
        if isinstance(params, dict):
            return spec["detector"], dict(params)
    raise InvalidParam(
        "members", f"expects names or {{detector: NAME, params: {{...}}}} mappings; member {i} is {spec!r}"
    )


class EnsembleDetector(DriftDetector):
    """Ensemble: alarms when the member detectors' votes reach the voting rule.

    Every member is fed every value. A member's alarm is a *vote* that stays valid for
    ``vote_window`` values (members rarely alarm on the very same value). The ensemble alarms when

    * ``any``: some member alarms (votes are not needed);
    * ``majority``: more than half of the members have a valid vote;
    * ``all``: every member has a valid vote;
    * ``weighted``: the ``weights`` of the members with a valid vote add up to at least
      ``weight_threshold`` times the total weight.

    After an ensemble alarm every member and vote is reset (on the next update, as River's detectors
    do), so one change gives one alarm. The warning zone is on while some member is in its warning
    zone or holds a vote, and the ensemble has not alarmed. Members are built with
    :func:`raydrift.detection.make_detector` (the ensemble's ``seed`` is passed on), so they save,
    restore (as plain state) and pickle as the ensemble does.

    Parameters
    ----------
    members : list
        Registry names or ``{detector: NAME, params: {...}}`` mappings (two or more; not ``ensemble``).
    voting : {"any", "majority", "all", "weighted"}
        The voting rule.
    weights : list of float or None
        One non-negative weight per member for ``weighted`` voting (default: all 1).
    weight_threshold : float
        Fraction of the total weight needed by ``weighted`` voting, in (0, 1].
    vote_window : int
        Values a member's alarm stays a valid vote (>= 1).
    seed : int
        Passed to members that take a seed.

    Examples
    --------
    >>> import random
    >>> det = EnsembleDetector(members=["adwin", "page_hinkley", "hddm_a"], voting="majority")
    >>> rng = random.Random(0)
    >>> stream = [float(rng.random() < 0.05) for _ in range(2000)] + [float(rng.random() < 0.5) for _ in range(500)]
    >>> alarms = [i for i, x in enumerate(stream) if (det.update(x), det.drift_detected)[1]]
    >>> 2000 <= alarms[0] < 2200
    True
    """

    name: ClassVar[str] = "ensemble"
    has_warnings: ClassVar[bool] = True

    def __init__(
        self,
        members: list[Any] | None = None,
        voting: str = "majority",
        weights: list[float] | None = None,
        weight_threshold: float = 0.5,
        vote_window: int = 200,
        seed: int = 0,
    ) -> None:
        from raydrift.detection.registry import make_detector

        members = list(members) if members is not None else ["adwin", "page_hinkley", "hddm_a"]
        check_param("members", len(members) >= 2, "a list of two or more detectors", members)
        check_param("voting", voting in VOTINGS, f"one of {', '.join(VOTINGS)}", voting)
        check_param(
            "weights",
            weights is None
            or (len(weights) == len(members) and all(w >= 0 for w in weights) and sum(weights) > 0),
            f"null or {len(members)} non-negative numbers (one per member), not all 0",
            weights,
        )
        check_param("weight_threshold", 0.0 < weight_threshold <= 1.0, "a number in (0, 1]", weight_threshold)
        check_param("vote_window", vote_window >= 1, "an integer >= 1", vote_window)
        built: list[DriftDetector] = []
        for i, spec in enumerate(members):
            name, params = _member_spec(i, spec)
            if name == "ensemble":
                raise InvalidParam("members", f"member {i}: an ensemble cannot contain an ensemble")
            try:
                built.append(make_detector(name, params, seed=seed))
            except ConfigError as exc:
                raise InvalidParam("members", f"member {i} ({name}): {exc}") from None
        self.members = members
        self.voting = voting
        self.weights = weights
        self.weight_threshold = weight_threshold
        self.vote_window = vote_window
        self.seed = seed
        self._members = built
        self.reset()

    @property
    def input_domain(self) -> str:
        """The narrowest of the members' domains: every member is fed every value."""
        return narrowest([m.input_domain for m in self._members])

    @property
    def two_sided(self) -> bool:
        return all(m.two_sided for m in self._members)

    def configure_for_domain(self, domain: str) -> None:
        for m in self._members:
            m.configure_for_domain(domain)

    @property
    def detectors(self) -> list[DriftDetector]:
        """The member detectors (read-only use)."""
        return list(self._members)

    def reset(self) -> None:
        for m in self._members:
            m.reset()
        self._age: list[int | None] = [None] * len(self._members)  # values since each member's vote
        self._drift = False
        self._warning = False

    @property
    def statistic(self) -> float:
        """Fraction of the total weight holding a valid vote after the last update."""
        w = self.weights or [1.0] * len(self._members)
        return sum(wi for wi, a in zip(w, self._age, strict=True) if a is not None) / sum(w)

    def _votes_pass(self, fired_now: bool) -> bool:
        n = len(self._members)
        voted = sum(a is not None for a in self._age)
        if self.voting == "any":
            return fired_now
        if self.voting == "majority":
            return voted > n / 2
        if self.voting == "all":
            return voted == n
        return self.statistic >= self.weight_threshold - 1e-12

    def update(self, x: Any) -> None:
        if self._drift:
            self.reset()
        fired_now = False
        for i, m in enumerate(self._members):
            m.update(x)
            age = self._age[i]
            if m.drift_detected:
                self._age[i] = 0
                fired_now = True
            elif age is not None:
                self._age[i] = age + 1 if age + 1 < self.vote_window else None
        self._drift = self._votes_pass(fired_now)
        self._warning = not self._drift and (
            any(a is not None for a in self._age) or any(m.warning_detected for m in self._members)
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "params": to_plain(self.params()),
            "members": [m.state_dict() for m in self._members],
            "age": list(self._age),
            "drift": self._drift,
            "warning": self._warning,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._check_state_header(state, {"name", "params", "members", "age", "drift", "warning"})
        n, members, age = len(self._members), state["members"], state["age"]
        if type(members) is not list or len(members) != n:
            raise StateError(f"state of {len(members) if type(members) is list else 'no'} members loaded into {n}")
        if type(age) is not list or len(age) != n or not all(a is None or (type(a) is int and a >= 0) for a in age):
            raise StateError(f"state of detector 'ensemble'['age']: expected {n} vote ages (null or integers >= 0)")
        if type(state["drift"]) is not bool or type(state["warning"]) is not bool:
            raise StateError("state of detector 'ensemble': 'drift' and 'warning' must be booleans")
        self._load_params(state["params"])
        for m, s in zip(self._members, members, strict=True):
            m.load_state_dict(s)
        self._age = list(age)
        self._drift = state["drift"]
        self._warning = state["warning"]

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield {}
        yield {
            "members": ["adwin", {"detector": "page_hinkley", "params": {"threshold": 30.0}}],
            "voting": "any",
        }
        yield {"members": ["adwin", "hddm_a", "ddm"], "voting": "all", "vote_window": 300}
        yield {"members": ["adwin", "hddm_w", "cusum"], "voting": "weighted", "weights": [2.0, 1.0, 1.0]}
