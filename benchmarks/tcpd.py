"""Real-world change points: raydrift's detectors on the Turing Change Point Dataset (TCPD).

TCPD (van den Burg & Williams 2020, "An Evaluation of Change Point Detection Algorithms") is a set of
real-world time series, each with the change points marked by several human annotators. This script
reads the series from a TCPD checkout or from a git mirror of its repository (``--tcpd PATH``; a bare
or mirror repository is read with ``git show``, nothing is copied), leaves out the ``quality_control_*``
series (synthetic checks of the annotation tool), and feeds each series through raydrift's
:class:`~raydrift.detection.DetectionEngine` the way a monitor would: as a lower-is-better ``real``
metric, in batches of ``--batch`` values (64), resuming after each event with the same model (so
detection continues from the located change point). The predicted change points are the events'
``change_sample_index`` (converted to TCPD's 0-based index of the first value of the new segment).

Only the series stored in the repository are used (the ones its build script downloads are not
there). Missing values (``null``) are not fed; indices are mapped back to the series'. Multivariate
series (``run_log``): ``--dims first`` (default) feeds the first dimension only; ``--dims each`` runs
one engine per dimension and takes the union of their change points.

The score is TCPD's F1 with a margin of 5 (:func:`f_measure`): precision against the union of the
annotators' change points, recall averaged over annotators, the start of the series counted as a change
point in every set, each annotated point matched to at most one prediction within the margin.

Usage::

    python benchmarks/tcpd.py --tcpd /path/to/TCPD                       # never, adwin, bocpd
    python benchmarks/tcpd.py --tcpd PATH --detectors never adwin "bocpd:hazard=0.004,threshold=0.9999"
    python benchmarks/tcpd.py --tcpd PATH --direction degrade --per-series --json out.json
    python benchmarks/tcpd.py --tcpd PATH --tune nile businv --marginals --detectors "bocpd_trend:hazard=0.01|0.001"

A detector is ``name`` or ``name:key=value,key=value`` (values read as JSON where they parse, else as
strings); ``key=a|b`` runs one setting per value (several such keys: every combination). ``--tune
SERIES...`` adds the mean F1 over those series and over the others (settings picked on the first are
judged on the second); ``--marginals`` prints, per parameter value, the mean of that F1 over the
grid's settings with that value. ``--stationary N`` also counts each detector's alarms on three N-value streams without a change
(i.i.d. normal, i.i.d. exponential, Gaussian AR(1) with coefficient 0.5), fed the same way.
``--json`` never replaces an existing file without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from raydrift.config import DriftDetectionConfig
from raydrift.detection.engine import BatchResult, DetectionEngine

DEFAULT_DETECTORS = ("never", "adwin", "bocpd")
MARGIN = 5


# --- the metric ----------------------------------------------------------------------------------
def true_positives(truth: Iterable[int], predicted: Iterable[int], margin: int = MARGIN) -> set[int]:
    """The points of ``truth`` matched by a prediction within ``margin``, each prediction used once.

    The truth points are taken in increasing order; each takes the closest unused prediction within
    the margin (the smaller one on a tie).
    """
    left = sorted(set(predicted))
    hit: set[int] = set()
    for tau in sorted(set(truth)):
        close = [(abs(tau - x), x) for x in left if abs(tau - x) <= margin]
        if close:
            hit.add(tau)
            left.remove(min(close)[1])
    return hit


@dataclass
class Score:
    """F1 of one series, with its precision and recall."""

    f1: float
    precision: float
    recall: float


def f_measure(annotations: Mapping[str, Iterable[int]], predicted: Iterable[int], margin: int = MARGIN) -> Score:
    """TCPD's F1: precision against the union of the annotations, recall averaged over annotators.

    Every set (each annotator's, the predictions) includes the start of the series, 0. Locations are
    0-based indices of the first value after the change.
    """
    sets = [set(a) | {0} for a in annotations.values()]
    if not sets:
        raise ValueError("no annotators")
    x = set(predicted) | {0}
    union = set().union(*sets)
    precision = len(true_positives(union, x, margin)) / len(x)
    recall = sum(len(true_positives(s, x, margin)) / len(s) for s in sets) / len(sets)
    f1 = 2.0 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return Score(f1, precision, recall)


# --- the data ------------------------------------------------------------------------------------
@dataclass
class Series:
    """One TCPD series: its values per dimension (NaN where missing) and its annotations."""

    name: str
    values: list[np.ndarray]
    annotations: dict[str, list[int]]

    @property
    def n_obs(self) -> int:
        return int(self.values[0].shape[0])


class TCPDSource:
    """Reads TCPD's files from a checkout (a work tree) or a bare / mirror git repository."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.bare = not (path / "annotations.json").is_file()
        if self.bare and not _is_git_dir(path):
            raise SystemExit(f"error: {path} is neither a TCPD checkout nor a git repository of it")

    def read(self, rel: str) -> str:
        if not self.bare:
            return (self.path / rel).read_text()
        return _git(self.path, "show", f"HEAD:{rel}")

    def dataset_files(self) -> list[str]:
        if self.bare:
            names = _git(self.path, "ls-tree", "-r", "--name-only", "HEAD", "datasets").split()
        else:
            names = [str(p.relative_to(self.path)) for p in (self.path / "datasets").glob("*/*.json")]
        out = []
        for rel in names:
            parts = Path(rel).parts
            if len(parts) == 3 and parts[2] == f"{parts[1]}.json":
                out.append(rel)
        return sorted(out)


def _git(path: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(path), *args], check=True, capture_output=True, text=True).stdout


def _is_git_dir(path: Path) -> bool:
    r = subprocess.run(["git", "-C", str(path), "rev-parse", "--git-dir"], capture_output=True, text=True)
    return r.returncode == 0


def load_series(source: TCPDSource, only: list[str] | None = None) -> list[Series]:
    """Every stored series except ``quality_control_*`` (or those named in ``only``), sorted by name."""
    annotations = json.loads(source.read("annotations.json"))
    out = []
    for rel in source.dataset_files():
        name = Path(rel).parts[1]
        if name.startswith("quality_control") or (only and name not in only) or name not in annotations:
            continue
        data = json.loads(source.read(rel))
        values = [np.array([np.nan if v is None else float(v) for v in s["raw"]]) for s in data["series"]]
        out.append(Series(name, values, {k: list(v) for k, v in annotations[name].items()}))
    return out


# --- running a detector --------------------------------------------------------------------------
@dataclass
class DetectorSpec:
    """A detector to run: its registry name and constructor parameters."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        if not self.params:
            return self.name
        return f"{self.name}:" + ",".join(f"{k}={v}" for k, v in self.params.items())


def _value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def parse_specs(text: str) -> list[DetectorSpec]:
    """``name`` or ``name:key=value,key=value`` (values parsed as JSON where they parse); a value
    ``a|b|c`` gives one detector per choice (every combination over the keys: a grid)."""
    name, _, rest = text.partition(":")
    choices: list[tuple[str, list[Any]]] = []
    for item in filter(None, rest.split(",")):
        key, sep, raw = item.partition("=")
        if not sep:
            raise SystemExit(f"error: detector '{text}': '{item}' is not key=value")
        choices.append((key.strip(), [_value(v) for v in raw.split("|")]))
    combos = itertools.product(*(values for _, values in choices))
    return [DetectorSpec(name.strip(), {k: v for (k, _), v in zip(choices, combo, strict=True)}) for combo in combos]


def parse_spec(text: str) -> DetectorSpec:
    """One detector (see :func:`parse_specs`; no ``|`` choices)."""
    specs = parse_specs(text)
    if len(specs) != 1:
        raise SystemExit(f"error: detector '{text}' names {len(specs)} settings, expected one")
    return specs[0]


def detect(values: np.ndarray, spec: DetectorSpec, direction: str, batch: int) -> list[int]:
    """0-based indices (into ``values``) of the change points the engine locates, in order.

    ``values`` are fed as a lower-is-better real metric in batches of ``batch``; after each event the
    engine resumes at the next batch with the same model version (the rest of the alarm's batch is
    fed first). An empty batch at the end lets the rest of a last-batch alarm be fed.
    """
    cfg = DriftDetectionConfig(detector=spec.name, params=spec.params, direction=direction)
    eng = DetectionEngine(cfg, metric="value", higher_is_better=False, domain="real")
    chunks = [values[i : i + batch] for i in range(0, len(values), batch)] + [values[:0]]
    results = [BatchResult(b, 0, 0, c, {}) for b, c in enumerate(chunks)]
    found: list[int] = []
    while eng.next_batch < len(results):
        out = eng.ingest(results[eng.next_batch])
        found.extend(e.change_sample_index - 1 for e in out.events)
        if eng.paused:
            eng.resume_after_update(eng.next_batch, 0)
    return found


def predict(series: Series, spec: DetectorSpec, direction: str, batch: int, dims: str) -> list[int]:
    """The predicted change points of a series (0-based indices), missing values skipped."""
    points: set[int] = set()
    for v in series.values if dims == "each" else series.values[:1]:
        kept = np.flatnonzero(np.isfinite(v))
        points.update(int(kept[i]) for i in detect(v[kept], spec, direction, batch))
    return sorted(points)


@dataclass
class SeriesResult:
    """One detector on one series."""

    series: str
    n_obs: int
    predicted: list[int]
    f1: float
    precision: float
    recall: float


@dataclass
class DetectorResult:
    """One detector on every series: the mean F1 and the per-series results."""

    detector: str
    params: dict[str, Any]
    mean_f1: float
    seconds: float
    series: list[SeriesResult]


def evaluate(spec: DetectorSpec, data: list[Series], direction: str, batch: int, dims: str) -> DetectorResult:
    t0 = time.perf_counter()
    rows = []
    for s in data:
        pred = predict(s, spec, direction, batch, dims)
        sc = f_measure(s.annotations, pred)
        rows.append(SeriesResult(s.name, s.n_obs, pred, sc.f1, sc.precision, sc.recall))
    mean = float(np.mean([r.f1 for r in rows])) if rows else float("nan")
    return DetectorResult(spec.name, spec.params, mean, time.perf_counter() - t0, rows)


def stationary_streams(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Streams without a change: i.i.d. normal, i.i.d. exponential (skewed, like a per-sample loss),
    and a Gaussian AR(1) with coefficient 0.5 (autocorrelated)."""
    rng = np.random.default_rng(seed)
    e = rng.normal(0.0, 1.0, n)
    ar = np.zeros(n)
    for i in range(1, n):
        ar[i] = 0.5 * ar[i - 1] + e[i]
    return {"normal": rng.normal(0.0, 1.0, n), "exponential": rng.exponential(1.0, n), "ar1(0.5)": ar}


def _print_stationary(specs: list[DetectorSpec], n: int, direction: str, batch: int) -> None:
    streams = stationary_streams(n)
    width = max(len(s.label) for s in specs)
    print(f"\nfalse alarms on {n:,} stationary values (direction {direction}, batches of {batch}; seed 0)")
    print(f"{'detector':<{width}}  " + "  ".join(f"{k:>11}" for k in streams) + "  us/value")
    for spec in specs:
        t0 = time.perf_counter()
        counts = [len(detect(xs, spec, direction, batch)) for xs in streams.values()]
        us = (time.perf_counter() - t0) / (n * len(streams)) * 1e6
        print(f"{spec.label:<{width}}  " + "  ".join(f"{c:>11}" for c in counts) + f"  {us:8.1f}")


# --- the command ---------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tcpd", type=Path, required=True, help="a TCPD checkout, or a bare / mirror git repository of it")
    p.add_argument("--detectors", nargs="+", default=list(DEFAULT_DETECTORS), help="name or name:key=value,...")
    p.add_argument("--direction", choices=("any", "degrade"), default="any", help="drift_detection.direction (any)")
    p.add_argument("--batch", type=int, default=64, help="values per batch (64)")
    p.add_argument("--dims", choices=("first", "each"), default="first", help="multivariate series: first dimension, or each")
    p.add_argument("--series", nargs="+", default=None, help="only these series")
    p.add_argument("--per-series", action="store_true", help="print each series' F1 per detector")
    p.add_argument("--tune", nargs="+", default=None, help="series to pick settings on: their mean F1 and the others'")
    p.add_argument(
        "--marginals", action="store_true", help="per parameter value, the mean (tune) F1 over the grid"
    )
    p.add_argument(
        "--stationary", type=int, default=0, help="also count false alarms on N-value streams without a change"
    )
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    return p


def subset_mean(r: DetectorResult, names: set[str], inside: bool = True) -> float:
    """Mean F1 over the series in ``names`` (``inside``) or over the others."""
    f1 = [s.f1 for s in r.series if (s.series in names) == inside]
    return float(np.mean(f1)) if f1 else float("nan")


def marginals(results: list[DetectorResult], names: set[str] | None) -> dict[str, dict[str, dict[str, float]]]:
    """Per detector name, per parameter, per value: the mean F1 (over ``names``, else every series)
    of the settings with that value, averaged over the other parameters' values in the grid."""
    out: dict[str, dict[str, dict[str, list[float]]]] = {}
    for r in results:
        score = r.mean_f1 if names is None else subset_mean(r, names)
        for key, value in r.params.items():
            out.setdefault(r.detector, {}).setdefault(key, {}).setdefault(json.dumps(value), []).append(score)
    return {
        d: {k: {v: float(np.mean(s)) for v, s in vals.items()} for k, vals in keys.items()} for d, keys in out.items()
    }


def _print_table(results: list[DetectorResult], per_series: bool, tune: set[str] | None) -> None:
    width = max(len(DetectorSpec(r.detector, r.params).label) for r in results)
    extra = "   tune  others" if tune else ""
    print(f"{'detector':<{width}}  mean F1  seconds{extra}")
    for r in results:
        cols = f"  {subset_mean(r, tune):5.3f}   {subset_mean(r, tune, False):5.3f}" if tune else ""
        print(f"{DetectorSpec(r.detector, r.params).label:<{width}}  {r.mean_f1:7.3f}  {r.seconds:7.1f}{cols}")
    if not per_series:
        return
    names = [s.series for s in results[0].series]
    print("\nper series (F1; columns in the order above)")
    for i, name in enumerate(names):
        print(f"{name:<20} " + " ".join(f"{r.series[i].f1:6.3f}" for r in results))


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    if a.json is not None and a.json.exists() and not a.overwrite:
        print(f"error: {a.json} exists: pass --overwrite to replace it, or --json another file", file=sys.stderr)
        return 2
    if a.batch < 1:
        print("error: --batch must be >= 1", file=sys.stderr)
        return 2
    data = load_series(TCPDSource(a.tcpd), a.series)
    if not data:
        print(f"error: no series found under {a.tcpd}", file=sys.stderr)
        return 2
    specs = [s for t in a.detectors for s in parse_specs(t)]
    tune = set(a.tune) if a.tune else None
    if tune and not tune <= {s.name for s in data}:
        print(f"error: --tune names unknown series: {sorted(tune - {s.name for s in data})}", file=sys.stderr)
        return 2
    results = [evaluate(s, data, a.direction, a.batch, a.dims) for s in specs]
    print(f"{len(data)} series, direction {a.direction}, batches of {a.batch}, dims {a.dims}, margin {MARGIN}")
    _print_table(results, a.per_series, tune)
    if a.stationary > 0:
        _print_stationary(specs, a.stationary, a.direction, a.batch)
    margins = marginals(results, tune) if a.marginals else {}
    for det, keys in margins.items():
        print(f"\n{det}: mean {'tune ' if tune else ''}F1 per parameter value (over the grid)")
        for key, vals in keys.items():
            best = max(vals, key=lambda v: vals[v])
            print(f"  {key}: " + ", ".join(f"{v} {m:.3f}" for v, m in vals.items()) + f"  -> {best}")
    if a.json is not None:
        doc = {
            "command": " ".join(sys.argv),
            "direction": a.direction,
            "batch": a.batch,
            "dims": a.dims,
            "margin": MARGIN,
            "tune": sorted(tune) if tune else None,
            "marginals": margins,
            "results": [asdict(r) for r in results],
        }
        a.json.write_text(json.dumps(doc, separators=(",", ":")) + "\n")  # compact: grids are large
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
