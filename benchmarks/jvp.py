"""Forward-mode JVP through the sampler vs plain sampling (PERF.md targets), measured in one run.

Prints, for the paper's 28x28 UNet (preset ``unet-28``, eval mode, float32, no_grad):

1. time ratios JVP / sampling per solver step (Euler and RK4; batch 8 and 32). A solver step
   of the augmented system (x, ẋ) is the same loop body as a plain step, so the step ratio is the
   ratio of whole runs at 20 or 100 steps; whole runs are timed too (skip with ``--no-full-run``).
   Routes: the model's hand-written ``forward_jvp`` (primal and tangent carried as one stacked
   batch ``[h; dh]``, one convolution call per layer; target <= 2.0),
   ``torch.func.jvp``, and central finite differences as one batch of 2B.
2. peak RSS of a forward-mode JVP at 100 steps / 20 steps (target <= 1.2), each in its own
   subprocess (``resource.getrusage`` maxrss), with the baseline after loading the model.
3. with 16 probes per sample (the primal runs once per stage for its 16 tangents): time per probe
   of one Euler step / time per sample of one plain Euler step on as many samples (target <= 1.15),
   and the same with 1 probe per sample.

Usage: ``python benchmarks/jvp.py [--repeats 2] [--threads 2] [--clock cpu] [--no-full-run] [--mem-batch 8]``.
Wall time on an idle 2-core CPU: about 4 minutes (much slower when the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

from causal_delta import jvp as J
from causal_delta.jvp._forward import _augmented_velocity
from causal_delta.models import build_model
from causal_delta.solvers import _batched, integrate, step

EVENT = (1, 28, 28)


def _model(dtype=torch.float32):
    torch.manual_seed(0)
    return build_model("unet-28", event_shape=EVENT).to(dtype).eval().requires_grad_(False)


CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = CLOCK["wall"]


def _best(fn, repeats):
    fn_times = []
    for _ in range(repeats):
        t = _clock()
        fn()
        fn_times.append(_clock() - t)
    return min(fn_times)


def _interleaved_best(calls, repeats):
    """Seconds per call, minimum over ``repeats`` rounds that run every call once in turn (after a warm-up)."""
    best = {k: float("inf") for k in calls}
    with torch.no_grad():
        for fn in calls.values():  # warm-up
            fn()
        for _ in range(repeats):
            for k, fn in calls.items():
                best[k] = min(best[k], _best(fn, 1))
    return best


def step_ratios(model, batch, method, repeats, routes=("forward_jvp", "func.jvp", "central_fd")):
    """Seconds of one plain step and JVP/plain ratios per route.

    Measurements are interleaved (plain, route 1, route 2, ..., repeated) and the minimum of each
    is kept, so that load from other processes on a shared machine affects them alike.
    """
    g = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, *EVENT, generator=g)
    z = torch.randn(batch, *EVENT, generator=g)
    t, h = torch.tensor(0.3), torch.tensor(0.01)
    plain = _batched(model)
    calls = {"plain": lambda: step(method, plain, x, t, h)}
    for route in routes:
        if route == "central_fd":
            xx = torch.cat([x + 1e-2 * z, x - 1e-2 * z])
            calls[route] = lambda xx=xx: step(method, plain, xx, t, h)
        else:
            aug = _batched(_augmented_velocity(model, batch, route == "forward_jvp"))
            s = torch.cat([x, z])
            calls[route] = lambda aug=aug, s=s: step(method, aug, s, t, h)
    best = _interleaved_best(calls, repeats)
    out = {"plain_s": best["plain"]}
    out.update({k: best[k] / best["plain"] for k in routes})
    return out


def full_run(model, batch, steps, repeats, method="euler"):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, *EVENT, generator=g)
    z = torch.randn(batch, *EVENT, generator=g)
    plain = fwd = float("inf")
    for _ in range(repeats):  # interleaved, min of each
        with torch.no_grad():
            plain = min(plain, _best(lambda: integrate(model, x, method=method, steps=steps), 1))
        fwd = min(fwd, _best(lambda: J.jvp_forward(model, x, z, method=method, steps=steps), 1))
    return {"plain_s": plain, "jvp_s": fwd, "ratio": fwd / plain}


def probes_per_sample(model, total, repeats, routes=("forward_jvp", "func.jvp")):
    """Seconds per probe of one Euler step with ``total/16`` samples x 16 probes and ``total``
    samples x 1 probe, and seconds per sample of a plain Euler step on ``total`` samples.

    Interleaved (plain, then each configuration, repeated) with the minimum of each kept."""
    g = torch.Generator().manual_seed(2)
    t, h = torch.tensor(0.3), torch.tensor(0.01)
    xs = torch.randn(total, *EVENT, generator=g)
    plain = _batched(model)
    calls = {"plain": lambda: step("euler", plain, xs, t, h)}
    for route in routes:
        for P in (16, 1):
            B = total // P
            x = torch.randn(B, *EVENT, generator=g)
            z = torch.randn(B * P, *EVENT, generator=g)
            aug = _batched(_augmented_velocity(model, B, route == "forward_jvp"))
            s = torch.cat([x, z])
            calls[f"{route}, P={P}"] = lambda aug=aug, s=s: step("euler", aug, s, t, h)
    best = _interleaved_best(calls, repeats)
    return {k: v / total for k, v in best.items()}


def _status_mib(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def _child(steps, batch, threads):
    """Run in a subprocess: resident memory before, and peak resident memory during, a forward-mode
    JVP of ``steps`` Euler steps (the high-water mark is reset after loading the model, Linux
    ``/proc/self/clear_refs``; where that is not allowed, the process-lifetime maximum is used)."""
    import resource

    torch.set_num_threads(threads)
    model = _model()
    x = torch.randn(batch, *EVENT)
    z = torch.randn_like(x)
    J.jvp_forward(model, x, z, method="euler", steps=1)  # allocator warm
    base = _status_mib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        reset = True
    except OSError:
        reset = False
    t = time.perf_counter()
    J.jvp_forward(model, x, z, method="euler", steps=steps)
    secs = time.perf_counter() - t
    peak = _status_mib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"steps": steps, "batch": batch, "base_mib": base, "peak_mib": peak, "seconds": secs,
                      "hwm_reset": reset}))


def peak_memory(batch, threads):
    rows = {}
    for steps in (20, 100):
        cmd = [sys.executable, __file__, "--child", str(steps), "--mem-batch", str(batch), "--threads", str(threads)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        rows[steps] = json.loads(out)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=4, help="interleaved repeats of each step timing (min kept)")
    p.add_argument("--run-repeats", type=int, default=1, help="repeats of each whole-run timing")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--no-full-run", action="store_true", help="skip the whole-run timings")
    p.add_argument("--mem-batch", type=int, default=8, help="batch of the peak-memory subprocesses")
    p.add_argument("--clock", choices=tuple(CLOCK), default="wall",
                   help="time the step ratios by wall clock or by this process's CPU time (with --threads 1, "
                        "much less sensitive to other processes on a shared machine)")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    global _clock
    _clock = CLOCK[a.clock]
    if a.child is not None:
        _child(a.child, a.mem_batch, a.threads)
        return
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {a.threads} threads, unet-28 {EVENT}, float32, eval, no_grad, "
          f"{a.clock} clock, load average {os.getloadavg()[0]:.1f}")
    model = _model()
    print(f"parameters: {sum(q.numel() for q in model.parameters()) / 1e6:.1f} M")
    t0 = time.perf_counter()

    print("\n1. JVP time / sampling time, per solver step (= ratio of whole runs at 20 or 100 steps)")
    head = ("method", "batch", "plain step s", "forward_jvp", "func.jvp", "central FD (2B)")
    print(f"{head[0]:7s} {head[1]:>5s} {head[2]:>12s} {head[3]:>11s} {head[4]:>9s} {head[5]:>15s}")
    for method in ("euler", "rk4"):
        for batch in (8, 32):
            routes = ("forward_jvp", "func.jvp", "central_fd") if batch == 8 else ("forward_jvp", "central_fd")
            r = step_ratios(model, batch, method, a.repeats, routes)
            cells = [f"{r[k]:.2f}x" if k in r else "-" for k in ("forward_jvp", "func.jvp", "central_fd")]
            print(f"{method:7s} {batch:5d} {r['plain_s']:12.3f} {cells[0]:>11s} {cells[1]:>9s} {cells[2]:>15s}",
                  flush=True)
    if not a.no_full_run:
        print(f"\nwhole runs (forward_jvp route), min over {a.run_repeats} repeat(s):")
        for method, batch, steps in (("euler", 8, 20), ("euler", 8, 100), ("rk4", 8, 20), ("euler", 32, 20)):
            r = full_run(model, batch, steps, a.run_repeats, method)
            print(f"  {method:5s} {steps:3d} steps, batch {batch:2d}: sampling {r['plain_s']:6.1f} s, "
                  f"JVP {r['jvp_s']:6.1f} s, ratio {r['ratio']:.2f}x", flush=True)

    for total in (16, 32):
        print(f"\n2. time per probe / sampling time per sample, one Euler step, {total} probes in all")
        routes = ("forward_jvp", "func.jvp") if total == 16 else ("forward_jvp",)
        res = probes_per_sample(model, total, a.repeats, routes)
        per_sample = res.pop("plain")
        print(f"  plain sampling, batch {total:2d}   {per_sample * 1e3:8.1f} ms per sample")
        for k, v in res.items():
            print(f"  {k:22s} {v * 1e3:8.1f} ms per probe  {v / per_sample:5.2f}x", flush=True)

    print(f"\n3. peak RSS, forward-mode JVP, Euler, batch {a.mem_batch} (one subprocess per configuration)")
    mem = peak_memory(a.mem_batch, a.threads)
    for steps, row in mem.items():
        print(f"  {steps:3d} steps: peak {row['peak_mib']:.0f} MiB "
              f"(warm process before the JVP {row['base_mib']:.0f} MiB), "
              f"{row['seconds']:.1f} s")
    r100, r20 = mem[100], mem[20]
    inc20 = max(r20["peak_mib"] - r20["base_mib"], 1e-9)
    ratio_inc = (r100["peak_mib"] - r100["base_mib"]) / inc20
    print(f"  ratio 100 / 20 steps: {r100['peak_mib'] / r20['peak_mib']:.3f} (peak RSS); "
          f"{ratio_inc:.2f} (peak increment over the warm process)")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
