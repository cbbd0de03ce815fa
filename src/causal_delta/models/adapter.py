r"""Adapt a velocity network written for another flow library to ``velocity(x, t)``.

Flow-matching code bases call their networks in different ways: ``forward(x, t)``
(Meta's ``flow_matching``, this library) or ``forward(t, x)`` (torchdiffeq / torchdyn /
torchcfm wrappers), with the time as a Python float, a 0-dim tensor, a per-sample ``(B,)``
tensor or a ``(B, 1)`` column, sometimes with conditioning keywords (``y=labels``).
:func:`as_velocity` wraps such a module once so that it follows the library's convention

.. math::  v(x, t): \; x \in \mathbb{R}^{B \times \text{event}},\; t \in [0, 1]^{B}
    \;\mapsto\; \mathbb{R}^{B \times \text{event}},

and goes straight into :func:`causal_delta.solvers.sample`, :mod:`causal_delta.jvp`,
:mod:`causal_delta.dependence` and :mod:`causal_delta.diagnostics`.

``signature="auto"`` reads the names of ``forward``'s first two arguments (``t``/``time``/
``timestep`` ... against anything else) and, when the names do not decide, tries both orders;
``time="auto"`` tries the time forms in the order ``batch``, ``batch1``, ``scalar``, ``float``
(per-sample forms first) on a small probe batch and keeps the first whose output has the
shape of ``x`` and, for per-sample forms, whose rows equal those of calls with one common time
(so a time broadcast against the wrong axis is caught). The probe runs once, at construction
when ``event_shape`` is given, else at the first call; :attr:`VelocityAdapter.decision` says
what was chosen and why.

A module whose time is a scalar (``scalar`` / ``float``) is called once per distinct time of
the batch (the solvers pass one time per step, so once per stage; per-sample times, as in a
training loss, cost one call per distinct value). ``float`` needs ``t.item()``, which
``torch.func.vmap`` over times cannot do (per-sample gradients in ``diagnose``); prefer a
tensor time.

Example:
    >>> import torch
    >>> from torch import nn
    >>> class Net(nn.Module):  # torchcfm style: forward(t, x), t a 0-dim tensor
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.lin = nn.Linear(3, 2)
    ...     def forward(self, t, x):
    ...         return self.lin(torch.cat([x, t.repeat(x.shape[0])[:, None]], dim=1))
    >>> v = as_velocity(Net(), event_shape=(2,))
    >>> (v.signature, v.time)
    ('t,x', 'scalar')
    >>> v(torch.zeros(4, 2), torch.rand(4)).shape
    torch.Size([4, 2])
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["SIGNATURES", "TIME_FORMS", "VelocityAdapter", "as_velocity"]

SIGNATURES = ("x,t", "t,x")
"""Argument orders of the wrapped ``forward``."""

TIME_FORMS = ("batch", "batch1", "scalar", "float")
"""How the wrapped module takes the time: ``(B,)``, ``(B, 1)``, 0-dim tensor, Python float
(in the order ``auto`` tries them)."""

_TIME_NAMES = frozenset({"t", "time", "times", "timestep", "timesteps", "tau", "s"})
_PROBE_TIMES = (0.21, 0.47, 0.73, 0.36, 0.88, 0.12, 0.59)


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if value not in ("auto", *choices):
        raise ValueError(f"{name} must be one of {['auto', *choices]}, got {value!r}")
    return value


def _positional_names(module: nn.Module, cond: dict) -> list[str] | None:
    """Names of ``forward``'s positional parameters not given as conditioning (``None``: ``*args``)."""
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return None
    names = []
    for p in params:
        if p.kind is p.VAR_POSITIONAL:
            return None
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name not in cond:
            names.append(p.name)
    return names


def _signature_from_names(names: list[str] | None) -> tuple[str | None, str]:
    """``(signature or None, reason)`` from the first two argument names of ``forward``."""
    if names is None:
        return None, "forward takes *args"
    if len(names) < 2:
        raise ValueError(f"module.forward must take the sample and the time as its first two arguments, "
                         f"it takes {names}")
    a, b = (n.lower() for n in names[:2])
    if (a in _TIME_NAMES) != (b in _TIME_NAMES):
        sig = "t,x" if a in _TIME_NAMES else "x,t"
        return sig, f"argument names forward({names[0]}, {names[1]})"
    return None, f"argument names forward({names[0]}, {names[1]}) do not say which is the time"


def _expand_cond(cond: dict, x: Tensor) -> dict:
    """Conditioning for a call on ``x``: tensors go to ``x``'s device, leading size 1 is repeated."""
    out = {}
    for key, value in cond.items():
        if isinstance(value, Tensor):
            value = value.to(device=x.device)
            if value.ndim >= 1 and value.shape[0] == 1 and x.shape[0] != 1:
                value = value.expand(x.shape[0], *value.shape[1:])
        out[key] = value
    return out


class VelocityAdapter(nn.Module):
    """``forward(x, t)`` in the library's convention over a module called another way.

    Built by :func:`as_velocity`; see there. The wrapped module is the submodule ``module``,
    so ``state_dict``, ``.to()``, ``.eval()`` and ``torch.func.functional_call`` see its
    parameters (under the prefix ``module.``).

    Attributes:
        module: the wrapped network.
        signature: ``"x,t"`` or ``"t,x"`` (``None`` until an ``auto`` probe has run).
        time: one of :data:`TIME_FORMS` (``None`` until an ``auto`` probe has run).
        cond: conditioning keywords passed to every call.
        decision: what was chosen and why (``""`` until chosen).
    """

    def __init__(self, module: nn.Module, signature: str = "auto", time: str = "auto", **cond: Any) -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise ValueError(f"module must be a torch.nn.Module, got {type(module).__name__}")
        self.module = module
        self.training = module.training  # an eval() module stays in eval (jvp warns about training mode)
        self.cond = dict(cond)
        _check_choice("signature", signature, SIGNATURES)
        _check_choice("time", time, TIME_FORMS)
        names = _positional_names(module, self.cond)
        self._named, self._name_reason = (signature, "given") if signature != "auto" else _signature_from_names(names)
        self.signature: str | None = None if signature == "auto" else signature
        self.time: str | None = None if time == "auto" else time
        self.decision = "" if self.signature is None or self.time is None else "signature and time given"

    # -- calling the wrapped module ------------------------------------------------------------
    def _call(self, x: Tensor, t: Tensor, signature: str, time: str) -> Tensor:
        """The wrapped module on ``x`` (B, *event) at times ``t`` (B,) in the given form."""
        B = x.shape[0]
        if time in ("batch", "batch1"):
            tt = t if time == "batch" else t.unsqueeze(1)
            return self._raw(x, tt, signature)
        # one scalar time per call: group the batch by distinct times (the solvers pass one)
        if B == 1 or t.stride(0) == 0 or bool((t == t[:1]).all()):
            return self._raw(x, self._scalar(t[0], time), signature)
        values, inverse = torch.unique(t, return_inverse=True)
        parts, index = [], []
        for k in range(values.shape[0]):
            sel = (inverse == k).nonzero().squeeze(1)
            parts.append(self._raw(x.index_select(0, sel), self._scalar(values[k], time), signature))
            index.append(sel)
        return torch.cat(parts).index_select(0, torch.argsort(torch.cat(index)))

    @staticmethod
    def _scalar(t0: Tensor, time: str):
        if time == "scalar":
            return t0
        try:
            return float(t0)
        except RuntimeError as exc:  # under torch.func.vmap over times
            raise RuntimeError("time='float' needs t.item(), which torch.func.vmap over times cannot do "
                               "(per-sample gradients); use a module that takes a tensor time") from exc

    def _raw(self, x: Tensor, t: Any, signature: str) -> Tensor:
        cond = _expand_cond(self.cond, x)
        return self.module(x, t, **cond) if signature == "x,t" else self.module(t, x, **cond)

    # -- the auto probe -----------------------------------------------------------------------------
    def probe(self, event_shape: Sequence[int], *, dtype: torch.dtype | None = None,
              device: torch.device | str | None = None) -> str:
        """Choose ``signature`` and ``time`` by calling the module on a small batch; return :attr:`decision`.

        Raises:
            ValueError: no candidate runs (the message lists each one's error) or both argument
                orders run and the names of ``forward``'s arguments do not decide between them.
        """
        event = tuple(int(s) for s in event_shape)
        if dtype is None or device is None:
            p = next(iter(self.module.parameters()), None)
            dtype = dtype or (p.dtype if p is not None and p.is_floating_point() else torch.get_default_dtype())
            device = device or (p.device if p is not None else "cpu")
        # a batch size that is no event dimension, so a time broadcast against the wrong axis fails
        B = next(b for b in (3, 5, 7, 11, 13) if b not in event)
        # deterministic, spread-out values without a random draw: a lazy probe may run inside
        # torch.func.vmap, which refuses random operations
        n = B * math.prod(event)
        x = torch.sin(torch.arange(n, dtype=torch.float64) * 0.731 + 0.3).mul(1.5).reshape(B, *event)
        x = x.to(dtype=dtype, device=device)
        t = torch.tensor(_PROBE_TIMES[:B] if B <= len(_PROBE_TIMES) else torch.linspace(0.1, 0.9, B).tolist(),
                         dtype=dtype, device=device)
        sigs = [self.signature] if self.signature else ([self._named] if self._named else list(SIGNATURES))
        forms = [self.time] if self.time else list(TIME_FORMS)
        works: dict[str, str] = {}
        errors: list[str] = []
        was_training = self.module.training
        self.module.eval()  # probe calls must not update batch-norm statistics or draw dropout masks
        try:
            with torch.no_grad():
                for sig in sigs:
                    for form in forms:
                        problem = self._try(x, t, sig, form)
                        if problem is None:
                            works.setdefault(sig, form)
                            break
                        errors.append(f"({sig}) time={form}: {problem}")
        finally:
            self.module.train(was_training)
        if not works:
            raise ValueError(f"as_velocity: the module runs in none of the tried forms on a probe batch of shape "
                             f"{(B, *event)}: " + "; ".join(errors) + ". Pass signature= and time= explicitly "
                             "(or check event_shape)")
        if len(works) > 1:
            raise ValueError(f"as_velocity: cannot decide the argument order: the module runs as forward(x, t) "
                             f"(time={works['x,t']}) and as forward(t, x) (time={works['t,x']}), and the "
                             f"{self._name_reason}; pass signature='x,t' or signature='t,x'")
        (sig, form), = works.items()
        why_sig = ("given" if self.signature else self._name_reason if self._named
                   else f"{self._name_reason}; only this order ran on the probe batch")
        why_time = "given" if self.time else (
            f"first of {list(TIME_FORMS)} that ran on a probe batch of {B}"
            + (" and matched per-sample calls" if form in ("batch", "batch1") else ""))
        self.signature, self.time = sig, form
        self.decision = f"signature {sig} ({why_sig}); time {form} ({why_time})"
        return self.decision

    def _try(self, x: Tensor, t: Tensor, sig: str, form: str) -> str | None:
        """``None`` when the module runs correctly in this form, else why not (one line)."""
        try:
            out = self._call(x, t, sig, form)
        except Exception as exc:  # noqa: BLE001 - any failure of the user's module means: not this form
            return f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"
        if not isinstance(out, Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            return f"output {got}, expected {tuple(x.shape)}"
        if form in ("batch", "batch1"):  # row i must be the velocity at time t_i
            try:
                rows = torch.stack([self._call(x, t[i].expand(x.shape[0]), sig, form)[i] for i in range(x.shape[0])])
            except Exception as exc:  # noqa: BLE001 - as above
                return f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"
            tol = 1e-4 if x.dtype in (torch.float32, torch.float64) else 1e-2
            if not torch.allclose(rows, out, rtol=tol, atol=tol):
                return "rows differ from calls with one common time (time broadcast along another axis?)"
        return None

    # -- the library's convention ---------------------------------------------------------------
    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """Velocity ``(B, *event)`` at ``x`` ``(B, *event)`` and times ``t`` ``(B,)`` (or a number)."""
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if self.signature is None or self.time is None:
            self.probe(x.shape[1:], dtype=x.dtype, device=x.device)
        return self._call(x, t, self.signature, self.time)

    def _forward_jvp(self, x: Tensor, t: Tensor, dx: Tensor) -> tuple[Tensor, Tensor]:
        if self.signature is None or self.time is None:
            self.probe(x.shape[1:], dtype=x.dtype, device=x.device)
        if self.time not in ("batch", "batch1"):
            raise ValueError("forward_jvp of a wrapped module is used only with a per-sample time (batch / batch1)")
        tt = t if self.time == "batch" else t.unsqueeze(1)
        cond = _expand_cond(self.cond, x)
        fj = self.module.forward_jvp
        return fj(x, tt, dx, **cond) if self.signature == "x,t" else fj(tt, x, dx, **cond)

    @property
    def forward_jvp(self):
        """The wrapped module's ``forward_jvp`` (same argument order as its ``forward``, tangent last);
        absent when the module has none, so the library uses ``torch.func.jvp``."""
        if not callable(getattr(self.module, "forward_jvp", None)) or self.time in ("scalar", "float"):
            raise AttributeError("forward_jvp")
        return self._forward_jvp

    def extra_repr(self) -> str:
        return f"signature={self.signature!r}, time={self.time!r}, cond={sorted(self.cond)}"


def as_velocity(module: nn.Module, signature: str = "auto", time: str = "auto", *,
                event_shape: Sequence[int] | None = None, **cond: Any) -> VelocityAdapter:
    """Wrap ``module`` so that it is called as ``velocity(x: (B, *event), t: (B,)) -> (B, *event)``.

    Arguments:
        module: the velocity network, e.g. ``forward(self, t, x)`` or ``forward(self, x, t, y=None)``.
        signature: ``"x,t"``, ``"t,x"`` or ``"auto"`` (argument names, else a probe).
        time: how ``module`` takes the time: ``"batch"`` ``(B,)``, ``"batch1"`` ``(B, 1)``,
            ``"scalar"`` (0-dim tensor), ``"float"`` (Python number) or ``"auto"`` (probe).
        event_shape: shape of one sample; when given, an ``auto`` probe runs now (else at the
            first call, on that call's sample shape).
        cond: keyword arguments passed to every call (conditioning such as ``y=labels``). A
            tensor whose first dimension is 1 is repeated to each call's batch size (one
            condition for every sample); tensors follow ``x``'s device; anything else is passed
            unchanged.

    Returns:
        A :class:`VelocityAdapter` (an ``nn.Module``). It has ``forward_jvp`` only when
        ``module`` has one and takes a per-sample time; otherwise :mod:`causal_delta.jvp`
        uses ``torch.func.jvp``.

    Raises:
        ValueError: an unknown ``signature`` / ``time``, a ``module`` that is no ``nn.Module``,
            or (probe) a module that runs in no form or in both argument orders undecidably.
    """
    adapter = VelocityAdapter(module, signature, time, **cond)
    if event_shape is not None and (adapter.signature is None or adapter.time is None):
        adapter.probe(event_shape)
    return adapter
