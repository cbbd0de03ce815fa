"""Cost of one t-grid point of the gradient-variance diagnostic against one training step.

One grid point computes ``n`` per-sample gradients with ``vmap(grad_and_value(...))`` over
``functional_call`` (:func:`causal_delta.diagnostics.gradient_variance`); one training step is a
forward, backward and AdamW update on a batch of the same ``n`` pairs (the loop of
:func:`causal_delta.training.train`). Both are timed in one run after a warm-up (the first
``vmap`` call pays a one-off tracing cost, reported separately); the ratio is the figure.

    python benchmarks/gradient_variance.py [--n 256] [--dim 50] [--hidden 256] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import repeat_times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=256, help="pairs per grid point = training batch")
    parser.add_argument("--dim", type=int, default=50)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--time-embed", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F

    from causal_delta.diagnostics import gradient_variance
    from causal_delta.models import build_model
    from causal_delta.paths import LinearPath

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = build_model("mlp-small", event_shape=(args.dim,), hidden=args.hidden, depth=args.depth,
                      time_embed=args.time_embed)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(args.n, args.dim, generator=g)
    x1 = torch.randn(args.n, args.dim, generator=g) + 5
    t0 = time.perf_counter()
    gradient_variance(net, x0, x1, [0.5])
    first = time.perf_counter() - t0

    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    path = LinearPath()

    def train_step():
        t = torch.rand(args.n, generator=g)
        b = path.sample(x0, x1, t)
        loss = F.mse_loss(net(b.x_t, b.t), b.target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def grid_point():
        gradient_variance(net, x0, x1, [0.5])

    train_step()
    diag = repeat_times(grid_point, args.repeats)
    step = repeat_times(train_step, args.repeats)
    d, s = statistics.median(diag), statistics.median(step)
    params = sum(p.numel() for p in net.parameters())
    print(f"mlp-small d={args.dim} hidden={args.hidden} depth={args.depth} time_embed={args.time_embed} "
          f"({params:,} params), n={args.n}, {args.threads} thread(s)")
    print(f"first grid point (with vmap tracing): {first * 1e3:.1f} ms")
    print(f"one t-grid point: {d * 1e3:.1f} ms (median of {args.repeats}); one training step: {s * 1e3:.1f} ms")
    print(f"ratio grid point / training step: {d / s:.1f}x")


if __name__ == "__main__":
    main()
