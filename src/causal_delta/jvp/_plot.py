"""Files of an ε sweep: ``{stem}.json`` and a log-log ``{stem}.png`` (matplotlib imported lazily by ``report``)."""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["write_eps_sweep"]


def write_eps_sweep(result: Mapping, out_dir: str, *, stem: str = "eps_sweep") -> dict:
    """Write :func:`eps_sweep` output as ``{stem}.json`` and a log-log ``{stem}.png`` in ``out_dir``."""
    from pathlib import Path

    from .. import report

    out = Path(out_dir)
    paths = {"json": report.write_json(out / f"{stem}.json", result)}
    fig, ax = report.new_figure(figsize=(6, 4))
    eps = result["eps"]
    styles = {"fd": "-o", "central": "-s"}
    for i, (dt, per_mode) in enumerate(result["errors"].items()):
        color = f"C{i}"
        for m, errs in per_mode.items():
            ax.loglog(eps, [max(e, 1e-17) for e in errs], styles.get(m, "-"), color=color, ms=3,
                      label=f"{m} ({dt})")
        ax.axhline(max(result["forward_mode_error"][dt], 1e-17), color=color, ls=":",
                   label=f"forward mode ({dt})")
    ax.set_xlabel("ε")
    ax.set_ylabel("relative error vs forward mode (float64)")
    ax.set_title(f"finite-difference JVP error ({result['method']}, {result['steps']} steps)")
    ax.legend(fontsize=7)
    paths["png"] = report.save_figure(fig, out / f"{stem}.png")
    return paths
