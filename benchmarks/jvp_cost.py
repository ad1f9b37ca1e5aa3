"""Cost of one JVP-regularized step vs one replay step on the same batch (spec point 5: target <= 2x).

Both steps run through :func:`raydrift.learning.loop.compute_step_gradients` (what the training loop
does per step, without the optimizer) on the MNIST harness's CNN, with a current and a history batch
of ``--batch`` samples each. Also times the naive JVP implementation the spec warns about (a second
forward/backward pass for ``g_c``, then the JVP), to show what reusing the step's own gradient saves.
Steps are interleaved and the median of ``--repeats`` is reported, which keeps the ratio meaningful
on a busy machine.

Usage::

    python benchmarks/jvp_cost.py [--batch 32] [--repeats 30] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harnesses.mnist import MNISTHarness  # noqa: E402
from raydrift.learning.loop import compute_step_gradients  # noqa: E402
from raydrift.learning.strategies.jvp import JVPOptions, JVPRegularizedUpdate  # noqa: E402
from raydrift.learning.strategies.replay import ReplayUpdate  # noqa: E402


class NaiveJVP(JVPRegularizedUpdate):
    """The reference loss (``g_c`` by a separate ``autograd.grad``), back-propagated: the slow way."""

    def backward(
        self, model: Any, harness: Any, x_cur: Any, y_cur: Any, x_hist: Any, y_hist: Any, ctx: Any
    ) -> Any:
        loss = self.loss(model, harness, x_cur, y_cur, x_hist, y_hist)
        loss.backward()
        return loss.detach()


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--kappa", type=float, default=0.0, help="params.input_scale (kappa) of the JVP step")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    harness = MNISTHarness(seed=0)
    model = harness.build_model().to(a.device)
    model.train()
    d = harness.digits()
    xc = harness.prepare(d.train_x[: a.batch], 1)
    yc = d.train_y[: a.batch]
    xh = harness.prepare(d.train_x[a.batch : 2 * a.batch], 0)
    yh = d.train_y[a.batch : 2 * a.batch]
    options = JVPOptions(input_scale=a.kappa)
    steps = {
        "replay": ReplayUpdate(),
        "jvp": JVPRegularizedUpdate(options=options),
        "jvp (naive: 2nd pass for g_c)": NaiveJVP(options=options),
    }
    times: dict[str, list[float]] = {k: [] for k in steps}

    def sync() -> None:
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()

    for i in range(a.repeats + 3):
        for name, strategy in steps.items():
            sync()
            t0 = time.perf_counter()
            compute_step_gradients(model, harness, strategy, xc, yc, xh, yh)
            sync()
            if i >= 3:  # warm-up
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"one step, current + history batches of {a.batch}, MNIST CNN, {a.device}, {a.threads} thread(s), "
        f"median of {a.repeats}:"
    )
    for name, t in med.items():
        print(f"  {name:32s} {1000 * t:7.1f} ms   {t / med['replay']:.2f}x replay")
    return med


if __name__ == "__main__":
    main()
