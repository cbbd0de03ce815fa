"""Tables, headline and figures of ``known-graphs`` (from the per-graph entries of the run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import _common as C

__all__ = ["headline", "summary_markdown", "solver_line", "figures"]

_EST = (("jvp", "JVP"), ("conditioned", "conditioned"), ("hold_fixed", "hold-fixed"))


def _motifs(rows):
    return [r for r in rows if "motif" in r]


def _count(rows, block: str, key: str) -> str:
    ms = [r["motif"][block] for r in _motifs(rows) if key in r["motif"][block]]
    return f"{sum(bool(m[key]) for m in ms)}/{len(ms)}"


def headline(tabular: list[dict], images: list[dict]) -> dict[str, Any]:
    """Counts of right verdicts and separated intervals per level and estimator."""
    out: dict[str, Any] = {}
    for level, rows in (("tabular", tabular), ("images", images)):
        if not _motifs(rows):
            continue
        for block in ("raw", "robust", "normalised"):
            tag = "" if block == "raw" else f"_{block}"
            for est in ("conditioned", "hold_fixed"):
                out[f"{level}_{est}_right{tag}"] = _count(rows, block, f"verdict_{est}")
                out[f"{level}_{est}_separated{tag}"] = _count(rows, block, f"separated_{est}")
    for level, rows in (("tabular", tabular), ("images", images)):
        for key in ("pc_labels", "jvp_pc", "jvp_pc_hold_fixed"):
            v = [r[key]["skeleton_shd"] for r in rows if key in r]
            if v:
                out[f"{level}_{key}_skeleton_shd_max"] = max(v)
    return out


def _ci(e: dict | None) -> str:
    if e is None:
        return ""
    return f"{C.fmt(e['estimate'], 3)} [{C.fmt(e['lower'], 3)}, {C.fmt(e['upper'], 3)}]"


def _yn(b) -> str:
    return "n/a" if b is None else ("yes" if b else "NO")


def _motif_table(rows: list[dict], images: bool) -> str:
    head = ["graph", "seed", "pair \\| middle", "data corr / partial", "JVP", "conditioned", "hold-fixed",
            "right (cond / hold)", "separated (cond / hold)", "robust separated (cond / hold)", "top-1 % share",
            "PC labels / JVP-PC skel. SHD"]
    if images:
        head += ["fidelity: max abs Δcorr, gen vs train", "read-out R² (SCM scenes)"]
    body = []
    for r in _motifs(rows):
        m = r["motif"]
        raw, rob = m["raw"], m["robust"]
        d = m.get("data", {})
        share = max(v for k, v in m["tail_share_top1pct"].items() if k != "product")
        row = [r["name"], str(r["seed"]), f"{'/'.join(m['pair'])} \\| {m['middle']}",
               f"{C.fmt(d.get('corr'), 3)} / {C.fmt(d.get('partial_corr'), 3)}",
               _ci(raw["jvp"]), _ci(raw["conditioned"]), _ci(raw.get("hold_fixed")),
               f"{_yn(raw['verdict_conditioned'])} / {_yn(raw.get('verdict_hold_fixed'))}",
               f"{_yn(raw['separated_conditioned'])} / {_yn(raw.get('separated_hold_fixed'))}",
               f"{_yn(rob['separated_conditioned'])} / {_yn(rob.get('separated_hold_fixed'))}",
               C.fmt(share, 2),
               f"{r.get('pc_labels', {}).get('skeleton_shd', 'n/a')} / {r['jvp_pc']['skeleton_shd']}"]
        if images:
            row += [C.fmt(r["fidelity"]["corr_gap_max"], 3), ", ".join(C.fmt(v, 3) for v in r["readout_r2_scm"])]
        body.append(row)
    return C.markdown_table(head, body)


def _other_table(rows: list[dict]) -> str:
    body = []
    for r in rows:
        if "motif" in r:
            continue
        ind = r.get("independence")
        body.append([r["name"], str(r["seed"]), r["graph"],
                     C.fmt(ind["max_abs_corr"], 3) if ind else "", _yn(ind["all_cover_zero"]) if ind else "",
                     str(r.get("pc_labels", {}).get("skeleton_shd", "n/a")), str(r["jvp_pc"]["skeleton_shd"]),
                     str(r.get("jvp_pc_hold_fixed", {}).get("skeleton_shd", "n/a")),
                     str(r.get("jvp_pc_hold_fixed", r["jvp_pc"])["shd"])])
    if not body:
        return ""
    return C.markdown_table(["graph", "seed", "edges", "max abs JVP corr", "every CI covers 0",
                             "PC labels skel. SHD", "JVP-PC skel. SHD (condition)",
                             "JVP-PC skel. SHD (hold-fixed)", "JVP-PC SHD vs CPDAG (hold-fixed)"], body)


def _span(values, form: str = "{:.3f}") -> str:
    """``"lo–hi"`` of the non-None values formatted with ``form`` (one value when they agree)."""
    vals = [v for v in values if v is not None]
    if not vals:
        return "n/a"
    f = form.format
    lo, hi = min(vals), max(vals)
    return f(lo) if f(lo) == f(hi) else f"{f(lo)}–{f(hi)}"


def memorisation_line(tabular: list[dict], images: list[dict]) -> str:
    """One line: the memorisation diagnostic (own-pair / nearest-copy ratio / Jacobian rank) over
    every flow of each level, ranges over graphs and seeds, beside the real-data baselines."""
    parts = []
    for title, rows in (("tabular", tabular), ("images", images)):
        ms = [r["memorisation"] for r in rows if r.get("memorisation")]
        if not ms:
            continue
        def span(key: str, form: str = "{:.3f}", ms: list = ms) -> str:
            return _span([m[key] for m in ms], form)

        memorised = sum(m.get("verdict") == "memorised" for m in ms)
        parts.append(f"{title} ({memorised}/{len(ms)} flows memorised): copies {span('copy_fraction', '{:.1%}')} "
                     f"(real {span('real_copy_fraction', '{:.1%}')}) / median d1/d2 {span('median_ratio')} "
                     f"(real {span('real_median_ratio')}) / rank {span('jacobian_rank', '{:.1f}')} "
                     f"of top {span('jacobian_k', '{:d}')}")
    if not parts:
        return ""
    return ("**Memorisation diagnostic** (own-pair / nearest-copy ratio / Jacobian rank; the flows see fresh "
            "draws at every step, so own-pair is the share of fresh samples copying one row of a reference "
            "draw, d1/d2 < 1/3): " + "; ".join(parts) + ". Per flow: `*/memorisation/summary.md`.")


def solver_line(tabular: list[dict], images: list[dict]) -> str:
    """One line: each level's solvers and steps (per flow, from its discretisation check) and how many
    flows' checks passed; every flow's own line is ``solver["line"]`` in ``report.json``."""
    parts = []
    for title, rows in (("tabular", tabular), ("images", images)):
        ss = [r["solver"] for r in rows if r.get("solver")]
        if not ss:
            continue
        counts: dict[str, int] = {}
        for s in ss:
            key = f"{s['method']} {s['steps']} steps"
            counts[key] = counts.get(key, 0) + 1
        passed = sum(bool(s["check"].get("converged")) for s in ss)
        chosen = "; ".join(f"{k} ({n} flow{'s' if n > 1 else ''})" for k, n in counts.items())
        parts.append(f"{title}: {chosen}, check passed for {passed}/{len(ss)}, chosen by {ss[0]['chosen_by']}")
    if not parts:
        return ""
    return ("**Solver** (per flow; discretisation check: the responses' correlation at N vs N/2 steps on a "
            "paired subsample, within the bootstrap SE): " + "; ".join(parts) + ".")


def summary_markdown(tabular: list[dict], images: list[dict]) -> str:
    """The ``summary.md`` body: one table per level."""
    parts = ["Verdict: conditioning on the middle node must lower |Corr| (fork, chain) or raise it "
             "(collider); *separated*: the 95 % bootstrap intervals of the unconditioned and the "
             "conditioned (or hold-fixed) correlation do not overlap. *Robust*: trimmed "
             "responses with the rows of the largest 1 % ‖Δy‖ dropped (per-sample normalised Δy/‖Δy‖ "
             "in report.json). Top-1 % share: the largest share of Σ Δy_a² carried by the top 1 % of "
             "samples over the three attributes.", ""]
    for title, rows, img in (("Tabular twin (identity read-out)", tabular, False), ("Images (scenes)", images, True)):
        if not rows:
            continue
        parts += [f"## {title}", "", _motif_table(rows, img), ""]
        other = _other_table(rows)
        if other:
            parts += [other, ""]
    for line in (solver_line(tabular, images), memorisation_line(tabular, images)):
        if line:
            parts += [line, ""]
    head = headline(tabular, images)
    if head:
        parts += ["## Counts", "", C.markdown_table(["quantity", "value"], [[k, str(v)] for k, v in head.items()]), ""]
    return "\n".join(parts)


def figures(out: Path, tabular: list[dict], images: list[dict], samples: dict) -> list[str]:
    """``forest.png`` (intervals per motif and level) and ``scenes.png`` (real vs generated)."""
    from ..report import new_figure, save_figure

    names = []
    levels = [(t, rows) for t, rows in (("tabular", tabular), ("images", images)) if _motifs(rows)]
    if levels:
        tallest = max(len(_motifs(r)) for _, r in levels)
        fig, axes = new_figure(1, len(levels), figsize=(6.5 * len(levels), 0.5 + 0.45 * tallest), squeeze=False)
        for ax, (title, rows) in zip(axes[0], levels):
            ms = _motifs(rows)
            for y, r in enumerate(ms):
                raw = r["motif"]["raw"]
                for off, (key, label) in zip((-0.2, 0.0, 0.2), _EST):
                    e = raw.get(key)
                    if e is None:
                        continue
                    err = [[e["estimate"] - e["lower"]], [e["upper"] - e["estimate"]]]
                    ax.errorbar(e["estimate"], y + off, xerr=err,
                                fmt="o", ms=3, color={"jvp": "C0", "conditioned": "C3", "hold_fixed": "C2"}[key],
                                label=label if y == 0 else None)
            ax.set_yticks(range(len(ms)))
            ax.set_yticklabels([f"{r['name']} s{r['seed']}: {'/'.join(r['motif']['pair'])} | {r['motif']['middle']}"
                                for r in ms], fontsize=7)
            ax.axvline(0, color="0.6", lw=0.8)
            ax.set(xlabel="Corr (95 % bootstrap CI)", title=title, xlim=(-1.05, 1.05))
            ax.legend(fontsize=7, loc="lower right")
        save_figure(fig, out / "forest.png")
        names.append("forest.png")
    if samples:
        keys = list(samples)
        fig, axes = new_figure(2 * len(keys), 8, figsize=(8, 2.1 * len(keys)), squeeze=False)
        for r, key in enumerate(keys):
            for row, imgs, tag in ((2 * r, samples[key][0], "real"), (2 * r + 1, samples[key][1], "generated")):
                for c in range(8):
                    ax = axes[row][c]
                    if c < len(imgs):
                        ax.imshow(((imgs[c].float() + 1) / 2).clamp(0, 1).permute(1, 2, 0).numpy())
                    ax.set_xticks([]), ax.set_yticks([])
                axes[row][0].set_ylabel(f"{key}\n{tag}", fontsize=7)
        save_figure(fig, out / "scenes.png")
        names.append("scenes.png")
    return names
