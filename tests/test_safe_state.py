"""State read back from disk cannot run code (issue 14 item 1; docs/reliability.md, "No code runs from a file").

A corpus of hostile pickles, each of which would run ``touch MARKER`` when unpickled by plain
``pickle``: REDUCE of ``os.system``, ``eval``, ``exec``, ``subprocess.getoutput`` and getattr chains;
dotted-name traversal (``random`` -> ``_os.system``) under every module the former allowlist
unpickler let through; REDUCE of formerly allowed classes (River's, numpy's, ``random.Random``)
with hostile arguments; nested in dicts and lists; protocols 0 to 5. A positive control proves that
each payload marked live does run under ``pickle.loads``. Each is fed to every place raydrift reads
state: a detector's and the engine's ``load_state_dict``, the run checkpoint (as the whole
``checkpoint/state.pt``, as its zip's ``data.pkl``, and as the bytes of its ``detector`` field),
``model.checkpoint``; and through the CLI (``raydrift run --resume``, ``raydrift validate``/``run``
with ``model.checkpoint``), which must exit 2 with one line. The marker file proves nothing ran.
"""

from __future__ import annotations

import importlib
import io
import os
import pickle
import struct
import subprocess
import sys
import types
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from raydrift.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from raydrift.config import DriftDetectionConfig
from raydrift.detection import DETECTOR_REGISTRY, make_detector
from raydrift.detection.engine import BatchResult, DetectionEngine
from raydrift.errors import UserError
from raydrift.plain_state import KIND, StateError, check_plain, from_plain
from raydrift.weights import check_weights_file, load_weights

ROOT = Path(__file__).resolve().parents[1]


# --- a small pickle assembler: the payloads are written opcode by opcode ----------------------------
@dataclass(frozen=True)
class G:
    """A global: ``module`` and a (possibly dotted) ``name``."""

    module: str
    name: str


@dataclass(frozen=True)
class C:
    """A call (REDUCE) of ``func`` with ``args``."""

    func: Any
    args: tuple[Any, ...]


@dataclass(frozen=True)
class Nest:
    """``{"detector": {"river": [inner]}}``: the payload deep inside plain-looking containers."""

    inner: Any


def _str(s: str, proto: int) -> bytes:
    if proto == 0:
        assert "\n" not in s and "\\" not in s
        return b"V" + s.encode("raw_unicode_escape") + b"\n"
    data = s.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _emit(node: Any, proto: int) -> bytes:
    if isinstance(node, str):
        return _str(node, proto)
    if isinstance(node, int):
        return b"I" + str(node).encode() + b"\n"
    if isinstance(node, tuple):
        return b"(" + b"".join(_emit(x, proto) for x in node) + b"t"
    if isinstance(node, G):
        if proto >= 4:
            return _str(node.module, proto) + _str(node.name, proto) + b"\x93"  # STACK_GLOBAL
        return b"c" + node.module.encode() + b"\n" + node.name.encode() + b"\n"  # GLOBAL
    if isinstance(node, C):
        return _emit(node.func, proto) + _emit(node.args, proto) + b"R"
    if isinstance(node, Nest):
        inner = b"(" + _emit(node.inner, proto) + b"l"  # [inner]
        river = b"(" + _str("river", proto) + inner + b"d"
        return b"(" + _str("detector", proto) + river + b"d"
    raise TypeError(node)


def assemble(node: Any, proto: int) -> bytes:
    head = b"\x80" + bytes([proto]) if proto >= 2 else b""
    return head + _emit(node, proto) + b"."


# --- the corpus -------------------------------------------------------------------------------------
#: the modules the former allowlist unpickler let through (by prefix or by (module, name))
FORMERLY_ALLOWED = [
    "river.drift.kswin",
    "river.drift.adwin",
    "river.drift.binary.ddm",
    "river.utils.rolling",
    "river.stats.mean",
    "river._river_rust",
    "builtins",
    "collections",
    "copyreg",
    "numpy",
    "numpy._core.multiarray",
    "numpy.random._pickle",
    "numpy.random.bit_generator",
    "random",
    "raydrift.detection.engine",
]


def _path_to_system(module: str) -> str | None:
    """A dotted attribute path from ``module`` to ``os.system`` (what protocol 4 resolves), if any."""
    frontier: list[tuple[Any, str]] = [(importlib.import_module(module), "")]
    seen = {id(frontier[0][0])}
    for _ in range(4):
        nxt = []
        for obj, path in frontier:
            for k in sorted(dir(obj)):
                if k.startswith("__"):
                    continue
                v = getattr(obj, k, None)
                p = f"{path}.{k}" if path else k
                if v is os.system:
                    return p
                if isinstance(v, types.ModuleType) and id(v) not in seen:
                    seen.add(id(v))
                    nxt.append((v, p))
        frontier = nxt
    return None


def corpus(marker: Path) -> list[tuple[str, Any, bool]]:
    """``(label, payload tree, live)``: live payloads run ``touch marker`` under plain pickle at protocol >= 4
    (dotted names) or any protocol (the rest)."""
    cmd = f"touch {marker}"
    code = f"__import__('os').system('touch {marker}')"
    system, ev = G("posix", "system"), G("builtins", "eval")
    imp = C(G("builtins", "__import__"), ("os",))
    items: list[tuple[str, Any, bool]] = [
        ("os.system", C(G("os", "system"), (cmd,)), True),
        ("posix.system", C(system, (cmd,)), True),
        ("eval", C(ev, (code,)), True),
        ("exec", C(G("builtins", "exec"), (code,)), True),
        ("subprocess.getoutput", C(G("subprocess", "getoutput"), (cmd,)), True),
        ("getattr chain", C(C(G("builtins", "getattr"), (imp, "system")), (cmd,)), True),
        ("ADWIN(eval)", C(G("river.drift.adwin", "ADWIN"), (C(ev, (code,)),)), True),
        ("Random(system)", C(G("random", "Random"), (C(system, (cmd,)),)), True),
        ("generator ctor(system)", C(G("numpy.random._pickle", "__generator_ctor"), (C(system, (cmd,)),)), True),
        ("deque(eval)", C(G("collections", "deque"), (C(ev, (code,)),)), True),
        ("defaultdict(system)", C(G("collections", "defaultdict"), (system,)), False),
        ("_reconstructor(system)", C(G("copyreg", "_reconstructor"), (G("builtins", "object"), system, cmd)), False),
        ("bad dotted name", C(G("river._river_rust", "drift.os.system"), (cmd,)), False),
    ]
    for module in FORMERLY_ALLOWED:
        path = _path_to_system(module)
        if path is not None:
            items.append((f"{module}:{path}", C(G(module, path), (cmd,)), True))
        else:  # no attribute path to os.system within 4 steps: a dotted name all the same (not live)
            items.append((f"{module}:__spec__.loader.load_module", C(G(module, "__spec__.loader.load_module"), (cmd,)), False))
    items += [(f"nested {label}", Nest(tree), live) for label, tree, live in items[:6]]
    return items


def _payloads(marker: Path) -> list[tuple[str, bytes, bool]]:
    out = []
    for label, tree, live in corpus(marker):
        for proto in range(6):
            dotted = isinstance(tree, C) and isinstance(tree.func, G) and "." in tree.func.name
            out.append((f"{label} p{proto}", assemble(tree, proto), live and (proto >= 4 or not dotted)))
    return out


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "OWNED"


def test_the_corpus_is_live_under_plain_pickle(marker: Path) -> None:
    # positive control: the refusals below mean something only if these bytes do run code
    payloads = _payloads(marker)
    dotted_modules = {label.split(":")[0] for label, _, _ in corpus(marker) if ":" in label}
    assert {"random", "river.drift.kswin", "river.utils.rolling", "river.stats.mean", "numpy"} <= dotted_modules
    live = [(label, data) for label, data, ok in payloads if ok]
    assert len(live) >= 80
    for label, data in live:
        marker.unlink(missing_ok=True)
        try:
            pickle.loads(data)  # noqa: S301 - the point of the control
        except Exception:  # noqa: BLE001, S110 - the command ran before whatever failed after it
            pass
        assert marker.exists(), f"payload {label} did not run under plain pickle"
    marker.unlink()


# --- every place state is read ----------------------------------------------------------------------
def _engine(detector: str = "adwin") -> DetectionEngine:
    return DetectionEngine(DriftDetectionConfig(detector=detector), "accuracy", True)


def _fed_engine() -> DetectionEngine:
    eng = _engine()
    rng = np.random.default_rng(0)
    for b in range(10):
        eng.ingest(BatchResult(b, 0, 0, (rng.random(16) < 0.9).astype(np.float32), {"accuracy": 0.9}))
    return eng


def _zip_with(data_pkl: bytes, path: Path) -> None:
    """A torch checkpoint whose ``data.pkl`` is ``data_pkl`` (the rest as torch.save writes it)."""
    buf = io.BytesIO()
    torch.save({"format": 2}, buf)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as out:
        for name in src.namelist():
            out.writestr(name, data_pkl if name.endswith("/data.pkl") else src.read(name))


def _checkpoint_fields(detector: Any) -> dict[str, Any]:
    return {
        "processed": 3,
        "version": 0,
        "weights": {"w": torch.ones(2)},
        "strategy_state": None,
        "stream": {"committed": 3},
        "detector": detector,
        "summary": "{}",
        "books": {"samples": 48, "monitor_seconds": 1.0, "last_value": 0.9},
        "metrics_rows": 0,
        "batches_rows": 3,
        "tracker": {},
    }


def _refused_in_one_line(call: Any, errors: tuple[type[BaseException], ...]) -> str:
    with pytest.raises(errors) as err:
        call()
    text = str(err.value)
    assert "\n" not in text and "weights_only=False" not in text and "weights_only` set to `False" not in text
    return text


def test_every_reader_refuses_the_corpus(tmp_path: Path, marker: Path) -> None:
    det_state = make_detector("adwin").state_dict()
    eng_state = _fed_engine().state_dict()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    path = checkpoint_path(run_dir)
    path.parent.mkdir()
    for label, data, _ in _payloads(marker):
        # a detector's and the engine's state with the pickle where River's object used to be
        _refused_in_one_line(lambda d=data: make_detector("adwin").load_state_dict({**det_state, "river": d}), (StateError,))
        bad = {**eng_state, "detector": {**det_state, "river": data}}
        _refused_in_one_line(lambda b=bad: _engine().load_state_dict(b), (StateError,))
        # the checkpoint: the whole file, its zip's data.pkl, the bytes of its detector field (format 1 and 2)
        path.write_bytes(data)
        _refused_in_one_line(lambda: load_checkpoint(run_dir, engine=_engine()), (UserError,))
        _refused_in_one_line(lambda: check_weights_file(path), (UserError,))
        _refused_in_one_line(lambda d=data: load_weights(io.BytesIO(d)), (UserError,))
        _zip_with(data, path)
        _refused_in_one_line(lambda: load_checkpoint(run_dir, engine=_engine()), (UserError,))
        _refused_in_one_line(lambda: check_weights_file(path), (UserError,))
        for fmt in (1, 2):
            torch.save({"format": fmt, **_checkpoint_fields(data)}, path)
            _refused_in_one_line(lambda: load_checkpoint(run_dir, engine=_engine()), (UserError,))
        assert not marker.exists(), f"payload {label} ran"


def test_a_valid_checkpoint_still_loads(tmp_path: Path) -> None:
    # the readers are not refusing everything: the same path with raydrift's own state goes through
    eng = _fed_engine()
    save_checkpoint(tmp_path, _checkpoint_fields(eng.state_dict()))
    again = _engine()
    assert load_checkpoint(tmp_path, engine=again)["processed"] == 3
    assert again.next_batch == eng.next_batch == 10
    torch.save({"w": torch.zeros(3)}, tmp_path / "w.pt")
    assert torch.equal(check_weights_file(tmp_path / "w.pt")["w"], torch.zeros(3))


# --- plain state that names something hostile -------------------------------------------------------
def _river(cls: str = "river.drift.adwin.ADWIN", **attrs: Any) -> dict[str, Any]:
    return {KIND: "river", "class": cls, "attrs": attrs}


HOSTILE_PLAIN = [
    ("a class outside the table", _river("posix.system")),
    ("a dotted class under River", _river("river.drift.kswin.random._os.system")),
    ("builtins.eval as a class", _river("builtins.eval")),
    ("a Python class as compiled", {KIND: "river_native", "class": "river.drift.adwin.ADWIN", "args": [], "state": {}}),
    ("eval as compiled", {KIND: "river_native", "class": "builtins.eval", "args": ["1"], "state": {}}),
    ("a dunder attribute", _river(__class__={KIND: "tuple", "items": []})),
    ("a method outside the table", _river("river.drift.page_hinkley.PageHinkley", _test_drift={KIND: "method", "name": "__reduce_ex__"})),
    ("a method on another attribute", _river("river.drift.page_hinkley.PageHinkley", delta={KIND: "method", "name": "_test_both"})),
    ("an unknown tag", {KIND: "global", "module": "os", "name": "system"}),
    ("an object array", {KIND: "ndarray", "dtype": "object", "shape": [1], "data": [1]}),
    ("a bit generator by name", {KIND: "generator", "state": {"bit_generator": "os.system", "state": {}}}),
    ("a bytes field", b"\x80\x04N."),
    ("a tuple", (1, 2)),
    ("a function", os.system),
    ("a non-str key", {1: 2}),
]


@pytest.mark.parametrize(("label", "value"), HOSTILE_PLAIN, ids=[h[0] for h in HOSTILE_PLAIN])
def test_plain_state_naming_code_is_refused(label: str, value: Any) -> None:
    det = make_detector("page_hinkley" if "PageHinkley" in repr(value) else "adwin")
    state = {**det.state_dict(), "river": value}
    text = _refused_in_one_line(lambda: det.load_state_dict(state), (StateError,))
    assert "state of detector" in text
    if isinstance(value, dict):
        with pytest.raises(StateError):
            from_plain(value)


def test_deep_nesting_is_refused_not_a_recursion_error() -> None:
    deep: Any = 1
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(StateError, match="nested deeper"):
        check_plain(deep)


@pytest.mark.parametrize("name", sorted(DETECTOR_REGISTRY))
def test_a_detector_state_with_a_wrong_field_is_refused(name: str) -> None:
    det = make_detector(name)
    for _ in range(50):
        det.update(0.0)
    state = det.state_dict()
    inner = "river" if "river" in state else "state" if "state" in state else "members"
    for broken in ({**state, "extra": 1}, {k: v for k, v in state.items() if k != inner}, {**state, inner: "x"}):
        with pytest.raises(StateError):
            make_detector(name).load_state_dict(broken)
    make_detector(name).load_state_dict(state)  # the unbroken state loads


# --- through the CLI: exit 2, one line, nothing ran ----------------------------------------------------
CONFIG = """
name: hostile
seed: 0
model: {{harness: synthetic{extra}}}
data: {{regime_batches: 5, num_regimes: 2}}
stream: {{batch_size: 16}}
monitor: {{num_monitors: 1, num_cpus: 1}}
train: {{num_workers: 0, epochs: 1}}
ray: {{include_dashboard: false, num_cpus: 1}}
"""


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [sys.executable, "-m", "raydrift.cli", *args], capture_output=True, text=True, env=env, timeout=300
    )


def _assert_refused(proc: subprocess.CompletedProcess[str], marker: Path, needle: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("raydrift: error: ") and needle in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout and "weights_only" not in proc.stderr
    assert not marker.exists()


def test_resume_on_a_hostile_checkpoint_exits_2(tmp_path: Path, marker: Path) -> None:
    run_dir = tmp_path / "run"
    path = checkpoint_path(run_dir)
    path.parent.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(CONFIG.format(extra=""))
    live = C(G("random", "_os.system"), (f"touch {marker}",))
    cases = [
        ("whole file", lambda: path.write_bytes(assemble(Nest(live), 4)), "not a weights-only torch file"),
        ("zip data.pkl", lambda: _zip_with(assemble(live, 5), path), "not a weights-only torch file"),
        (
            "detector field",
            lambda: torch.save({"format": 2, **_checkpoint_fields(assemble(live, 4))}, path),
            "field 'detector' is a bytes",
        ),
        ("format 1", lambda: torch.save({"format": 1, **_checkpoint_fields(assemble(live, 2))}, path), "format 1"),
    ]
    for _, write, needle in cases:
        write()
        _assert_refused(_cli("run", "--resume", str(run_dir)), marker, needle)


def test_a_model_checkpoint_that_runs_a_command_exits_2(tmp_path: Path, marker: Path) -> None:
    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, (f"touch {marker}",))

    weights = tmp_path / "model.pt"
    torch.save({"linear.weight": Evil()}, weights)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(CONFIG.format(extra=f", checkpoint: '{weights}'"))
    for command in ("validate", "run"):
        _assert_refused(_cli(command, str(cfg)), marker, "not a weights-only torch file")


# --- the plain form itself ----------------------------------------------------------------------------
def test_plain_round_trip_of_every_kind() -> None:
    from collections import deque

    from raydrift.plain_state import to_plain

    gen = np.random.default_rng(7)
    gen.random(3)
    rnd = __import__("random").Random(3)
    value = {
        "arrays": [np.arange(6).astype(t).reshape(2, 3) for t in ("float32", "float64", "int64", "uint8", "bool")],
        "scalar0d": np.array(2.5),
        "npscalars": [np.float64(0.1), np.int64(-3), np.bool_(True), np.float32(1.5)],
        "tuple": (1, "a", None),
        "deque": deque([np.ones(2), 2.0], maxlen=5),
        "window": deque([np.full(3, i, dtype=np.float32) for i in range(4)], maxlen=10),  # stacked
        "arrays list": [np.arange(2) + i for i in range(3)],
        "set": {3, 1, 2},
        "int keys": {1: "x", 2: [np.zeros(1)]},
        "bytes": b"\x00\x01abc",
        "gen": gen,
        "rnd": rnd,
        "nan": float("nan"),
    }
    plain = to_plain(value)
    check_plain(plain)
    buf = io.BytesIO()
    torch.save(plain, buf)
    buf.seek(0)
    back = from_plain(torch.load(buf, weights_only=True))
    for a, b in zip(value["arrays"], back["arrays"], strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    assert back["scalar0d"].shape == () and back["scalar0d"] == 2.5
    assert [type(x) for x in back["npscalars"]] == [type(x) for x in value["npscalars"]]
    assert back["tuple"] == (1, "a", None) and back["set"] == {1, 2, 3} and back["bytes"] == b"\x00\x01abc"
    assert back["deque"].maxlen == 5 and np.array_equal(back["deque"][0], np.ones(2))
    assert plain["window"][KIND] == "stacked" and back["window"].maxlen == 10
    assert [a.tolist() for a in back["window"]] == [[float(i)] * 3 for i in range(4)]
    assert back["window"][0].dtype == np.float32 and type(back["arrays list"]) is list
    assert [a.tolist() for a in back["arrays list"]] == [[i, i + 1] for i in range(3)]
    assert back["int keys"][1] == "x" and np.array_equal(back["int keys"][2][0], np.zeros(1))
    assert np.array_equal(back["gen"].random(4), gen.random(4))  # the generator continues identically
    assert back["rnd"].random() == rnd.random() and back["nan"] != back["nan"]


def test_to_plain_refuses_what_has_no_plain_form() -> None:
    from raydrift.plain_state import to_plain

    for value, match in [
        (os.system, "no plain form"),
        ({"__kind__": "x"}, "reserved key"),
        (np.array([object()]), "dtype object"),
        (open, "no plain form"),
    ]:
        with pytest.raises(StateError, match=match):
            to_plain({"field": value})


def test_a_river_state_with_a_wrong_attribute_type_is_refused() -> None:
    det = make_detector("adwin")
    for _ in range(100):
        det.update(0.0)
    state = det.state_dict()
    helper = state["river"]["attrs"]["_helper"]
    assert helper[KIND] == "river_native"
    for attrs, match in [
        ({"_helper": 1.5}, "_helper: a builtins.float"),
        ({"_helper": {**helper, "state": {KIND: "bytes", "data": torch.zeros(3, dtype=torch.uint8)}}}, "not a valid"),
        ({"delta": "0.1"}, "delta: a builtins.str"),
        ({"extra": 1}, "attributes"),
    ]:
        bad = {**state, "river": {**state["river"], "attrs": {**state["river"]["attrs"], **attrs}}}
        with pytest.raises(StateError, match=match):
            make_detector("adwin").load_state_dict(bad)


def test_a_bad_compiled_river_state_is_one_line_and_prints_nothing(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # River's Rust parser panics on bad bytes and prints a backtrace on fd 2: the refusal stays one line
    eng = _fed_engine()
    state = eng.state_dict()
    attrs = state["detector"]["river"]["attrs"]
    attrs["_helper"] = {**attrs["_helper"], "state": {KIND: "bytes", "data": torch.full((5,), 255, dtype=torch.uint8)}}
    save_checkpoint(tmp_path, _checkpoint_fields(state))
    capfd.readouterr()
    text = _refused_in_one_line(lambda: load_checkpoint(tmp_path, engine=_engine()), (UserError,))
    assert "not a valid AdaptiveWindowing state" in text
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_saved_parameters_the_constructor_refuses_are_refused() -> None:
    det = make_detector("adwin")
    state = det.state_dict()
    for params, match in [({**state["params"], "delta": 5.0}, "not valid parameters"), ({"delta": 0.1}, "parameters")]:
        with pytest.raises(StateError, match=match):
            make_detector("adwin").load_state_dict({**state, "params": params})
