"""Cost of one JVP-regularized step vs one replay step on the same batch (spec point 5: target <= 2x).

Both steps run through :func:`raydrift.learning.loop.compute_step_gradients` (what the training loop
does per step, without the optimizer) on the rotated-MNIST protocol's MLP 784-256-256-10 (``--model
mlp``, the default) or the MNIST harness's CNN (``--model cnn``), with a current and a history batch of
``--batch`` samples each. The JVP steps replay recorded logits (α = 0.5, the default) like DER++;
both targets are timed (``loss``: φ(D) of the history loss; ``outputs``: the memory outputs' change).
Also times the naive JVP implementation the spec warns about (a second forward/backward pass for
``g_c``, then the JVP), to show what reusing the step's own gradient saves. Steps are interleaved and
the median of ``--repeats`` is reported, which keeps the ratio meaningful on a busy machine.

Usage::

    python benchmarks/jvp_cost.py [--model mlp] [--batch 64] [--repeats 50] [--threads 1]
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
from raydrift.data import UpdateData  # noqa: E402
from raydrift.learning.loop import compute_step_gradients  # noqa: E402
from raydrift.learning.strategies.derpp import DERPPUpdate  # noqa: E402
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
    p.add_argument("--model", choices=["mlp", "cnn"], default="mlp")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--kappa", type=float, default=0.0, help="params.input_scale (kappa) of the JVP step")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    harness = MNISTHarness({"model": a.model}, seed=0)
    model = harness.build_model().to(a.device)
    model.train()
    d = harness.digits()
    xc = harness.prepare(d.train_x[: a.batch], 1)
    yc = d.train_y[: a.batch]
    xh = harness.prepare(d.train_x[a.batch : 2 * a.batch], 0)
    yh = d.train_y[a.batch : 2 * a.batch]
    options = JVPOptions(input_scale=a.kappa, target="loss")
    steps = {
        "replay": ReplayUpdate(),
        "der++": DERPPUpdate(),
        "jvp (target loss)": JVPRegularizedUpdate(options=options),
        "jvp (target outputs)": JVPRegularizedUpdate(options=JVPOptions(input_scale=a.kappa, target="outputs")),
        "jvp (target outputs, unit tangent)": JVPRegularizedUpdate(
            options=JVPOptions(input_scale=a.kappa, target="outputs", tangent="unit")
        ),
        "jvp (naive: 2nd pass for g_c)": NaiveJVP(options=options),
    }
    memory = UpdateData(xc, yc, xh, yh, memory_ids=torch.arange(len(yh)))
    for strategy in steps.values():
        strategy.setup(model, harness, memory)  # records the memory's logits (der++, jvp)
    hist_index = torch.arange(len(yh))
    times: dict[str, list[float]] = {k: [] for k in steps}

    def sync() -> None:
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()

    for i in range(a.repeats + 3):
        for name, strategy in steps.items():
            sync()
            t0 = time.perf_counter()
            compute_step_gradients(model, harness, strategy, xc, yc, xh, yh, hist_index=hist_index)
            sync()
            if i >= 3:  # warm-up
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"one step, current + history batches of {a.batch}, MNIST {a.model}, {a.device}, {a.threads} thread(s), "
        f"median of {a.repeats}:"
    )
    for name, t in med.items():
        print(f"  {name:36s} {1000 * t:7.1f} ms   {t / med['replay']:.2f}x replay")
    return med


if __name__ == "__main__":
    main()
