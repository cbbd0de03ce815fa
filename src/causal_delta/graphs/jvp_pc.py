r"""PC whose conditional-independence test is the JVP estimator itself.

For ``X ⟂ Y | Z`` on responses :math:`\Delta y = J_{C\circ f}(x_0)\,z` (rows: sample × probe,
columns: attributes), the test statistic is the paper's uncentred normalised correlation
(:func:`causal_delta.dependence.correlation`) of :math:`\Delta y_X` and :math:`\Delta y_Y`

* ``estimator="condition"`` — on the rows where the responses of ``Z`` are small (Section 6.4).
  Joint rule for a set ``Z``: score each row by :math:`s_i = \max_{k\in Z} |\Delta y_{ik}| / r_k`
  with :math:`r_k` the RMS of column ``k``, and keep the rows with :math:`s_i` at or below the
  ``quantile`` of ``s`` (so the kept fraction is ``quantile``). For ``|Z| = 1`` this is exactly
  ``dependence.condition(dy, k, quantile=quantile)``; ``Z = ∅`` keeps every row.
* ``estimator="hold_fixed"`` — on responses to probes projected onto the common null space of
  the gradients :math:`\nabla_{x_0}(C_k\circ f)(x_0)`, ``k ∈ Z`` (:func:`hold_fixed_probes_multi`),
  so every :math:`\Delta y_k`, ``k ∈ Z``, vanishes to first order. It recomputes responses, so it
  needs a :class:`ResponseOracle` (generator + read-out).

p-value: normal approximation with the bootstrap standard error,
:math:`p = \operatorname{erfc}(|\hat r| / (\sqrt2\,\widehat{SE}))` (two-sided), where
:math:`\widehat{SE}` is the standard deviation of ``n_boot`` bootstrap replicates of the
correlation on the kept rows (:func:`causal_delta.dependence.bootstrap`, seeded with ``seed``;
whole samples are resampled when several probes share one). Fewer than ``min_rows`` kept rows give
``p = NaN``, which PC reads as dependence. For a linear-Gaussian model both statistics tend to the
partial correlation given ``Z`` (conditioning as ``quantile → 0``; holding fixed exactly, since
:math:`J P J^T` is the conditional covariance when ``P`` projects out the rows of ``J_Z``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .._validation import check_positive_int
from ..dependence import bootstrap, correlation
from .pc import run_pc
from .result import GraphResult

__all__ = ["ESTIMATORS", "joint_small_mask", "hold_fixed_probes_multi", "ResponseOracle", "jvp_ci_test", "jvp_pc"]

ESTIMATORS = ("condition", "hold_fixed")


def _as_responses(dy: Any, name: str = "responses") -> Tensor:
    if not isinstance(dy, Tensor):
        dy = torch.as_tensor(dy)
    if dy.ndim != 2 or dy.shape[0] < 2 or dy.shape[1] < 2:
        raise ValueError(f"{name} must have shape (n, m) with n >= 2 rows and m >= 2 attributes, got {tuple(dy.shape)}")
    dy = dy.detach().cpu().to(torch.float64)  # (n, m) is small; the bootstrap draws on the CPU
    if not torch.isfinite(dy).all():
        raise ValueError(f"{name} must be finite, got NaN or inf entries")
    return dy


def joint_small_mask(dy: Tensor, given: Sequence[int], quantile: float) -> tuple[Tensor, float]:
    r"""Rows whose responses of every column in ``given`` are jointly small.

    Score :math:`s_i = \max_{k \in given} |\Delta y_{ik}| / \mathrm{RMS}(\Delta y_{\cdot k})`; keep
    :math:`s_i \le` the ``quantile`` of ``s``. Returns ``(mask (n,), threshold on s)``; an empty
    ``given`` keeps every row (threshold ``inf``).
    """
    q = float(quantile)
    if not 0.0 < q <= 1.0:
        raise ValueError(f"quantile must lie in (0, 1], got {quantile!r}")
    if len(given) == 0:
        return torch.ones(dy.shape[0], dtype=torch.bool), float("inf")
    cols = dy[:, list(given)].abs()
    rms = cols.pow(2).mean(0).sqrt()
    if not (rms > 0).all():
        raise ValueError(f"conditioning columns {list(given)} must not be identically zero")
    score = (cols / rms).amax(1)
    thr = float(torch.quantile(score, q))
    return score <= thr, thr


def hold_fixed_probes_multi(probes: Tensor, gradients: Tensor) -> Tensor:
    r"""Project probes onto the null space common to ``K`` per-sample gradients.

    :math:`z' = z - G^T (G G^T)^{+} G z` for each sample (``G`` the ``K × d`` stack of flattened
    gradients; the pseudo-inverse makes dependent or zero gradients harmless). Then
    :math:`G z' = 0`: every held read-out has zero response to first order. For ``K = 1`` it is
    :func:`causal_delta.dependence.hold_fixed_probes`.

    Args:
        probes: ``(n, *event)`` or ``(n, P, *event)``.
        gradients: ``(n, K, *event)``.
    """
    if gradients.ndim < 3:
        raise ValueError(f"gradients must have shape (n, K, *event), got {tuple(gradients.shape)}")
    n, K, event = gradients.shape[0], gradients.shape[1], tuple(gradients.shape[2:])
    if tuple(probes.shape) == (n, *event):
        z, squeeze = probes.unsqueeze(1), True
    elif probes.ndim == len(event) + 2 and probes.shape[0] == n and tuple(probes.shape[2:]) == event:
        z, squeeze = probes, False
    else:
        raise ValueError(f"probes must have shape (n, *event) or (n, P, *event) matching gradients "
                         f"{tuple(gradients.shape)}, got {tuple(probes.shape)}")
    zf = z.flatten(2)  # (n, P, d)
    G = gradients.to(zf.dtype).reshape(n, K, -1)  # (n, K, d)
    gram = G @ G.mT  # (n, K, K)
    coef = torch.linalg.pinv(gram, hermitian=True) @ (G @ zf.mT)  # (n, K, P)
    out = (zf - coef.mT @ G).reshape(z.shape)
    return out[:, 0] if squeeze else out


class ResponseOracle:
    r"""Responses of a generator + read-out, with any set of read-outs held fixed; cached per set.

    ``responses(hold)`` returns :math:`\Delta y = J_{C\circ f}(x_0)\, z'` ``(n·P, m)`` where ``z'``
    are the probes projected orthogonal to :math:`\nabla_{x_0}(C_k\circ f)(x_0)` for every
    ``k`` in ``hold`` (:func:`hold_fixed_probes_multi`); ``hold=()`` gives the plain responses.
    Gradients come from :func:`causal_delta.jvp.readout_gradient` (one per held attribute, cached).

    Args:
        velocity: the flow's ``velocity(x, t)``; x0: ``(n, *event)``; probes: ``(n, P, *event)``.
        classifier / features: the read-out (logits of an eval-mode module, or flattened indices;
            ``features=range(d)`` is the identity read-out of tabular data).
        method, steps, grid: solver settings; gradient_mode: ``"reverse"`` or ``"forward"`` (small d).
        batch_size: samples per forward-mode batch; gradient_batch_size: samples per gradient batch
            (default: ``batch_size`` in forward mode, at most 64 in reverse mode, which keeps the
            solver's autograd graph); progress: tqdm bars while computing.
    """

    def __init__(self, velocity: Callable, x0: Tensor, probes: Tensor, *, classifier: Any = None,
                 features: Sequence[int] | None = None, method: str = "rk4", steps: int = 100,
                 grid: Tensor | None = None, gradient_mode: str = "reverse", batch_size: int = 256,
                 gradient_batch_size: int | None = None, progress: bool = False) -> None:
        if probes.ndim != x0.ndim + 1 or probes.shape[0] != x0.shape[0] or probes.shape[2:] != x0.shape[1:]:
            raise ValueError(f"probes must have shape (n, P, *event) = ({x0.shape[0]}, P, "
                             f"{', '.join(map(str, x0.shape[1:]))}), got {tuple(probes.shape)}")
        if gradient_mode not in ("reverse", "forward"):
            raise ValueError(f"gradient_mode must be 'reverse' or 'forward', got {gradient_mode!r}")
        self.velocity, self.x0, self.probes = velocity, x0, probes
        self.kw = dict(classifier=classifier, features=features, method=method, steps=steps, grid=grid)
        self.gradient_mode = gradient_mode
        self.batch_size = check_positive_int("batch_size", batch_size)
        if gradient_batch_size is None:  # reverse mode keeps the solver's graph: small batches
            gradient_batch_size = batch_size if gradient_mode == "forward" else min(batch_size, 64)
        self.gradient_batch_size = check_positive_int("gradient_batch_size", gradient_batch_size)
        self.progress = progress
        self._responses: dict[frozenset, Tensor] = {}
        self._gradients: dict[int, Tensor] = {}

    def _chunks(self, desc: str) -> Any:
        starts = range(0, self.x0.shape[0], self.batch_size)
        if not self.progress:
            return starts
        from .._progress import progress_bar as tqdm  # tqdm is optional

        return tqdm(starts, desc=desc, leave=False, dynamic_ncols=True)

    @property
    def sample_index(self) -> Tensor:
        """``(n·P,)`` sample of each response row (for the grouped bootstrap)."""
        n, P = self.probes.shape[:2]
        return torch.arange(n).repeat_interleave(P)

    def gradient(self, k: int) -> Tensor:
        r""":math:`\nabla_{x_0}(C_k\circ f)(x_0)`, ``(n, *event)``."""
        if k not in self._gradients:
            from ..jvp import readout_gradient

            self._gradients[k] = torch.cat([
                readout_gradient(self.velocity, self.x0[s: s + self.batch_size], k, mode=self.gradient_mode,
                                 batch_size=self.gradient_batch_size, **self.kw)
                for s in self._chunks(f"gradient of read-out {k}")])
        return self._gradients[k]

    def responses(self, hold: Sequence[int] = ()) -> Tensor:
        """Responses ``(n·P, m)`` with the read-outs in ``hold`` held fixed."""
        key = frozenset(int(k) for k in hold)
        if key not in self._responses:
            from ..jvp import attribute_jvp

            z = self.probes
            if key:
                G = torch.stack([self.gradient(k) for k in sorted(key)], dim=1)
                z = hold_fixed_probes_multi(z, G)
            self._responses[key] = torch.cat([
                attribute_jvp(self.velocity, self.x0[s: s + self.batch_size], z[s: s + self.batch_size],
                              mode="forward", batch_size=self.batch_size, **self.kw).responses.detach()
                for s in self._chunks(f"responses, holding {sorted(key)}" if key else "responses")])
        return self._responses[key]


def _corr_test(sub: Tensor, groups: Tensor | None, n_boot: int, seed: int, min_rows: int) -> tuple[float, float, float]:
    """``(r, bootstrap SE, p)`` for the 2-column responses ``sub``."""
    if sub.shape[0] < min_rows:
        return float("nan"), float("nan"), float("nan")
    r = float(correlation(sub)[0, 1])
    bs = bootstrap(sub, statistic="corr", n_boot=n_boot, seed=seed, groups=groups)
    se = float(bs.se[0, 1])
    if not math.isfinite(r) or not math.isfinite(se):
        return r, se, float("nan")
    p = math.erfc(abs(r) / (math.sqrt(2.0) * se)) if se > 0 else float(r == 0.0)
    return r, se, p


def jvp_ci_test(source: Tensor | ResponseOracle, *, estimator: str = "condition", quantile: float = 0.05,
                n_boot: int = 200, seed: int = 0, groups: Tensor | None = None,
                min_rows: int = 20) -> Callable[[int, int, tuple[int, ...]], tuple[float, float, dict]]:
    """The JVP CI test as ``ci(x, y, given) -> (r, p, extra)`` for :func:`causal_delta.graphs.pc.run_pc`
    (see the module docstring for the statistic, the joint rule and the p-value)."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    check_positive_int("n_boot", n_boot)
    if not 0.0 < float(quantile) <= 1.0:
        raise ValueError(f"quantile must lie in (0, 1], got {quantile!r}")
    oracle = source if isinstance(source, ResponseOracle) else None
    if estimator == "hold_fixed" and oracle is None:
        raise ValueError("estimator='hold_fixed' needs a ResponseOracle (it recomputes the responses with "
                         "held probes), got a responses array; use estimator='condition' for fixed responses")
    base = _as_responses(oracle.responses() if oracle is not None else source)
    if groups is None and oracle is not None:
        groups = oracle.sample_index
    if groups is not None:
        groups = torch.as_tensor(groups).reshape(-1).cpu()
        if groups.shape[0] != base.shape[0]:
            raise ValueError(f"groups must have shape (n,) = ({base.shape[0]},), got {tuple(groups.shape)}")

    def ci(x: int, y: int, given: tuple[int, ...]) -> tuple[float, float, dict]:
        if estimator == "condition" or not given:
            mask, thr = joint_small_mask(base, given, quantile)
            sub = base[mask][:, [x, y]]
            g = groups[mask] if groups is not None else None
            r, se, p = _corr_test(sub, g, n_boot, seed, min_rows)
            return r, p, {"se": se, "kept": int(mask.sum()), "threshold": thr}
        assert oracle is not None  # hold_fixed without an oracle was refused above
        held = _as_responses(oracle.responses(given), "held responses")
        r, se, p = _corr_test(held[:, [x, y]], groups, n_boot, seed, min_rows)
        # Size of the held columns relative to their unheld RMS: ~0 when holding fixed worked.
        resid = float((held[:, list(given)].pow(2).mean(0).sqrt() / base[:, list(given)].pow(2).mean(0).sqrt()).max())
        return r, p, {"se": se, "kept": int(held.shape[0]), "held_rms_ratio": resid}

    return ci


def jvp_pc(
    source: Tensor | Any,
    names: Sequence[str],
    *,
    estimator: str = "condition",
    alpha: float = 0.05,
    depth: int = -1,
    quantile: float = 0.05,
    n_boot: int = 200,
    seed: int = 0,
    groups: Tensor | None = None,
    stable: bool = True,
    progress: bool = False,
) -> GraphResult:
    """The generator's graph: PC (causal-learn) whose CI test is the JVP estimator.

    Args:
        source: responses ``(n, m)`` (tensor or array; ``estimator="condition"`` only) or a
            :class:`ResponseOracle` (either estimator).
        names: ``m`` attribute names, in column order.
        estimator: ``"condition"`` (keep rows with small responses of the set) or ``"hold_fixed"``.
        alpha, depth, stable: PC settings; quantile: kept fraction when conditioning;
        n_boot, seed: bootstrap replicates and seed for the p-values; groups: ``(n,)`` sample
            index of each row (default: the oracle's), resampled whole.

    Returns:
        :class:`GraphResult` with test ``"jvp-condition"`` / ``"jvp-hold_fixed"``; each record's
        statistic is the (conditioned or held) correlation, ``extra`` its bootstrap SE and kept rows.
    """
    ci = jvp_ci_test(source, estimator=estimator, quantile=quantile, n_boot=n_boot, seed=seed, groups=groups)
    data = _as_responses(source.responses() if isinstance(source, ResponseOracle) else source).numpy()
    settings = {"estimator": estimator, "quantile": float(quantile), "n_boot": int(n_boot), "seed": int(seed),
                "n_rows": int(data.shape[0]), "statistic": "uncentred correlation of the responses",
                "p_value": "erfc(|r| / (sqrt(2) * bootstrap SE))"}
    return run_pc(data, names, ci, test=f"jvp-{estimator}", alpha=alpha, depth=depth, stable=stable,
                  settings=settings, progress=progress)
