"""Flux Matching training step / denoising-score-matching step, batch 512, d = 2.

One training step = loss, backward, AdamW update of a time-free ``mlp-small`` field (3 × 128
SiLU MLP held at ``t = 0``). Variants, timed interleaved in one run so load changes hit all
alike:

- ``dsm``: :func:`causal_delta.flux.dsm_loss` (noise target), the baseline;
- ``flux direct``: the authors' route — reverse-mode (double backprop) Hutchinson divergence,
  4 frozen-mean OU steps over the whole batch, posterior pairing;
- ``flux forward``: forward-mode divergence (hand-written JVP, backpropagated once), the fused
  exact label-conditioned OU step, own pairing (the library default);
- ``flux forward + posterior``: as above with the authors' pairing.

Prints median and best milliseconds per step and the ratio of medians to DSM. Target: the
default flux step <= 8x a DSM step (a direct implementation costs about 20x, MATH.md §8).

Usage: ``python benchmarks/flux.py [--batch 512] [--repeats 30] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from causal_delta.flux import TimeFree, dsm_loss, flux_matching_loss
from causal_delta.models import build_model

from _timing import repeat_times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the CPU is shared)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    theta = 2 * torch.pi * torch.rand(4096, generator=g)
    data = 3 * torch.stack([theta.cos(), theta.sin()], -1) + 0.1 * torch.randn(4096, 2, generator=g)
    torch.manual_seed(0)
    field = TimeFree(build_model("mlp-small", event_shape=(2,)))
    opt = torch.optim.AdamW(field.parameters(), lr=1e-4)
    sigma = 0.3

    def step(loss_fn):
        def run():
            idx = torch.randint(0, data.shape[0], (args.batch,), generator=g)
            loss = loss_fn(data[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return run

    fns = {
        "dsm": step(lambda x: dsm_loss(field, x, sigma, generator=g)),
        "flux direct (backward div, 4 OU steps, posterior)": step(lambda x: flux_matching_loss(
            field, x, sigma, method="backward", simulation="frozen-mean", pairing="posterior", generator=g)),
        "flux forward (default: fused OU, own pairing)": step(
            lambda x: flux_matching_loss(field, x, sigma, generator=g)),
        "flux forward + posterior pairing": step(lambda x: flux_matching_loss(
            field, x, sigma, pairing="posterior", generator=g)),
    }
    for fn in fns.values():  # warm-up (first forward-mode call loads torch's decompositions)
        fn()
        fn()
    times = {k: [] for k in fns}
    for _ in range(args.repeats):
        for k, fn in fns.items():
            times[k].extend(repeat_times(fn, 1))
    base = statistics.median(times["dsm"])
    print(f"batch {args.batch}, d = 2, mlp-small (3 x 128), {torch.get_num_threads()} thread(s), "
          f"{args.repeats} interleaved repeats")
    for k, ts in times.items():
        med = statistics.median(ts)
        print(f"{k:52s} median {med * 1e3:7.2f} ms  best {min(ts) * 1e3:7.2f} ms  ratio {med / base:5.2f}x")
    ratio = statistics.median(times["flux forward (default: fused OU, own pairing)"]) / base
    print(f"target <= 8x: {'met' if ratio <= 8 else 'NOT met'} ({ratio:.2f}x; direct "
          f"{statistics.median(times['flux direct (backward div, 4 OU steps, posterior)']) / base:.2f}x)")


if __name__ == "__main__":
    main()
