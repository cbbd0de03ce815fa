"""The flow a command reads: a causal-delta ``--checkpoint`` or a user's ``--model module:factory``.

A command's config inherits :class:`FlowSource`: the two mutually exclusive options (one is
required) and the options of the second way; ``load_velocity(config)`` returns ``(velocity, info)`` with the
same ``info`` keys as :func:`causal_delta.checkpoint.load_flow`, whichever was given::

    --model my_flows:make_net --weights net.pt [--model-args '{"width": 64}']
        [--signature auto|x,t|t,x] [--time auto|batch|batch1|scalar|float] [--event-shape 2]

``module`` is a dotted module name (importable from ``PYTHONPATH`` or the working directory)
or a path to a ``.py`` file; ``factory(**model_args)`` returns the ``nn.Module``;
``--weights`` is its state dict (``.pt`` / ``.pth`` through ``torch.load(weights_only=True)``,
or ``.safetensors``), loaded strictly. The module is wrapped by
:func:`causal_delta.models.as_velocity`; its source is ``N(0, I)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..config import option

__all__ = ["FlowSource", "load_velocity", "load_factory", "load_weights"]

# models.adapter.SIGNATURES / TIME_FORMS, spelled out here because building the parser must not import
# torch (`causal-delta --help` answers at once); tests/test_byo_model.py checks they agree.
SIGNATURES = ("x,t", "t,x")
TIME_FORMS = ("batch", "batch1", "scalar", "float")


@dataclass(kw_only=True)
class FlowSource:
    """Where a command's flow comes from: ``--checkpoint`` or ``--model`` (exactly one).

    A command's config dataclass inherits these fields (keyword-only, so the command's own
    required fields may follow).
    """

    checkpoint: str | None = option(None, group="flow", required=True,
                                    help="flow checkpoint (run dir or checkpoint dir)")
    model: str | None = option(None, group="flow", required=True, metavar="MODULE:FACTORY",
                               help="your own velocity network: FACTORY(**--model-args) in MODULE (dotted name on "
                                    "PYTHONPATH or a .py file) returns the nn.Module; see --weights")
    weights: str | None = option(None, metavar="FILE",
                                 help="with --model: the network's state dict (.pt/.pth or .safetensors)")
    model_args: dict | None = option(None, help="with --model: keyword arguments of the factory, a JSON object")
    signature: Literal["auto", "x,t", "t,x"] | None = option(
        None, help="with --model: argument order of its forward (default auto: the argument names, else a probe)")
    time: Literal["auto", "batch", "batch1", "scalar", "float"] | None = option(
        None, help="with --model: how its forward takes the time: (B,), (B, 1), 0-dim tensor, float "
                   "(default auto: a probe)")
    event_shape: tuple[int, ...] | None = option(
        None, metavar="D[,D...]", help="with --model: shape of one sample, e.g. 2 or 1,28,28 (default: the "
                                      "module's event_shape attribute)")


def load_factory(spec: str):
    """The callable ``FACTORY`` named by ``--model MODULE:FACTORY`` (module dotted or a .py file)."""
    import importlib
    import importlib.util
    import os
    import sys
    from pathlib import Path

    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--model must be MODULE:FACTORY (e.g. my_flows:make_net or path/to/nets.py:make_net), "
                         f"got {spec!r}")
    try:
        if module_name.endswith(".py") or os.sep in module_name:
            path = Path(module_name).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"--model file not found: {path}")
            name = f"_causal_delta_model_{path.stem}"  # registered: dataclasses and pickle look modules up
            loader_spec = importlib.util.spec_from_file_location(name, path)
            if loader_spec is None or loader_spec.loader is None:
                raise ValueError(f"--model: {path} cannot be loaded as a Python module")
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[name] = module
            loader_spec.loader.exec_module(module)
        else:
            if "" not in sys.path and os.getcwd() not in sys.path:  # `causal-delta` as a script: cwd too
                sys.path.append(os.getcwd())
            module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"--model: cannot import {module_name!r} ({type(exc).__name__}: {exc}); put its folder "
                         f"on PYTHONPATH or give the path of the .py file") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        public = sorted(n for n in vars(module) if not n.startswith("_") and callable(getattr(module, n)))
        raise ValueError(f"--model: module {module_name!r} has no callable {attr!r}; its callables: {public}")
    return factory


def load_weights(module, path: str) -> None:
    """Load the state dict in ``path`` into ``module`` strictly; ``ValueError`` naming ``--weights``."""
    from pathlib import Path

    import torch

    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"--weights file not found: {p}")
    try:
        if p.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(p))
        else:
            state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"--weights {p} is not a readable state dict (.pt/.pth via torch.save, or "
                         f".safetensors): {type(exc).__name__}: {exc}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        keys = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"--weights {p} must hold a state dict (name -> tensor), got {keys}; save "
                         f"model.state_dict() alone")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"--weights {p} do not fit the module built by --model: "
                         f"{' '.join(str(exc).split())}") from exc


def _build(args: FlowSource):
    """The user's module wrapped by ``as_velocity`` and the ``info`` dict of ``load_velocity``."""
    from torch import nn

    from ..models.adapter import as_velocity

    kwargs = args.model_args or {}  # parsed from JSON by the config
    if not isinstance(kwargs, dict):
        raise ValueError(f"--model-args must be a JSON object, got {args.model_args!r}")
    assert args.model is not None  # load_velocity calls this only with --model
    factory = load_factory(args.model)
    try:
        module = factory(**kwargs)
    except TypeError as exc:
        raise ValueError(f"--model {args.model} rejected --model-args {kwargs}: {exc}") from exc
    if not isinstance(module, nn.Module):
        raise ValueError(f"--model {args.model} must return a torch.nn.Module, returned {type(module).__name__}")
    if args.weights is not None:
        load_weights(module, args.weights)
    if args.event_shape is not None:
        event = tuple(int(d) for d in args.event_shape)
        if not event or any(d < 1 for d in event):
            raise ValueError(f"--event-shape must be positive integers (e.g. 2 or 1,28,28), got {args.event_shape}")
    else:
        found = getattr(module, "event_shape", None) or getattr(getattr(module, "config", None), "event_shape", None)
        if not found:
            raise ValueError(f"give --event-shape: the module built by --model {args.model} has no event_shape")
        event = tuple(int(s) for s in found)
    module.eval()
    module.requires_grad_(False)
    velocity = as_velocity(module, args.signature or "auto", args.time or "auto", event_shape=event)
    info = {
        "path": str(args.weights) if args.weights else args.model,
        "step": None,
        "event_shape": event,
        "parametrization": "velocity",
        "preset": None,
        "used_ema": False,
        "train_config": {},
        "model_config": {"model": args.model, "model_args": kwargs, "weights": args.weights,
                         "signature": velocity.signature, "time": velocity.time},
        "data": {},
        "adapter": velocity.decision,
    }
    return velocity, info


def load_velocity(args: FlowSource, *, use_ema: bool = True, device=None):
    """``(velocity, info)`` from ``--checkpoint`` or ``--model``, as :func:`~causal_delta.checkpoint.load_flow`.

    With ``--model``, ``info["adapter"]`` says which signature and time form were used, and
    ``info["train_config"]`` is empty (a ``N(0, I)`` source, no recorded training data).
    """
    if args.model is None:
        if args.checkpoint is None:  # the parser's required group makes this a library caller's slip
            raise ValueError("give --checkpoint or --model")
        for name in ("weights", "model_args", "event_shape", "signature", "time"):
            if getattr(args, name, None) is not None:
                raise ValueError(f"--{name.replace('_', '-')} applies to --model only, not to --checkpoint")
        from ..checkpoint import load_flow

        return load_flow(args.checkpoint, use_ema=use_ema, device=device)
    velocity, info = _build(args)
    if device is not None:
        velocity.to(device)
    print(f"--model {args.model}: {info['adapter']}")
    return velocity, info
