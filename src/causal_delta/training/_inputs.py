"""What :func:`causal_delta.training.train` trains and on what: the model (a preset or the user's
``nn.Module``) and the data (a named source, a path, a tensor, a torch ``Dataset``)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch
from torch import Tensor, nn

from ..datasets import DataSource, TensorSource
from ..paths import GaussianSource
from .config import TrainConfig

__all__ = ["DatasetSource", "as_data_source", "build_model", "check_model", "make_source", "model_record"]


class DatasetSource(DataSource):
    """A map-style torch ``Dataset`` as a data source: ``n`` items drawn with replacement.

    An item is a tensor ``(*event)`` or a tuple / list whose first element is one (labels are
    dropped, as in ``(image, label)`` datasets). Indices come from ``generator`` only, so the
    generator state is the loader position (exact resume), as for every data source.
    """

    def __init__(self, dataset, name: str | None = None) -> None:
        try:
            n = len(dataset)
        except TypeError as exc:
            raise ValueError(f"data: a Dataset must have a length (a map-style torch Dataset), got "
                             f"{type(dataset).__name__}") from exc
        if n < 1:
            raise ValueError("data: the Dataset is empty")
        self.dataset = dataset
        self.size = n
        self.name = name or type(dataset).__name__
        self.event_shape = tuple(self._item(0).shape)

    def _item(self, i: int) -> Tensor:
        item = self.dataset[i]
        if isinstance(item, (tuple, list)):
            item = item[0]
        x = torch.as_tensor(item)
        if not x.is_floating_point():
            raise ValueError(f"data: Dataset items must be floating-point tensors, got dtype {x.dtype}")
        return x.to(torch.float32)

    def __len__(self) -> int:
        return self.size

    def sample(self, n: int, generator: torch.Generator | None = None, *, rows: slice | None = None) -> Tensor:
        """``n`` items drawn with replacement; with ``rows``, the same draw but only ``rows`` of it
        are read (a DDP rank's share of the global batch): ``sample(n, g, rows=r) == sample(n, g)[r]``."""
        idx = torch.randint(0, self.size, (n,), generator=generator)
        return torch.stack([self._item(int(i)) for i in idx[slice(None) if rows is None else rows]])

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "size": self.size, "dtype": "float32"}


def as_data_source(data, config: TrainConfig) -> DataSource:
    """The data source of a run: ``config.data`` when ``data`` is ``None``, else ``data`` itself
    (a :class:`~causal_delta.datasets.DataSource`, a tensor ``(N, *event)`` or a torch ``Dataset``).

    Raises:
        ValueError: ``data`` is none of these; ``coupling="fixed"`` with data given as an object.
    """
    from ..datasets import load_data_source

    if data is None:
        if config.coupling == "fixed":
            from ..datasets.pairs import paired_source

            return paired_source(config.data, config.data_args, config.source, config.source_args)
        return load_data_source(config.data, **config.data_args)
    if config.coupling == "fixed" and not hasattr(data, "sample_pairs"):
        raise ValueError("coupling 'fixed' needs pairs: give a PairedSource "
                         "(causal_delta.datasets.pairs) as data, or a pairs file in config.data")
    if isinstance(data, DataSource):
        return data
    if isinstance(data, Tensor):
        return TensorSource(data, name="tensor")
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        return DatasetSource(data)
    raise ValueError(f"data must be a data-source name or path (in config.data), a tensor (N, *event), a "
                     f"torch Dataset or a DataSource, got {type(data).__name__}")


def make_source(config: TrainConfig | dict[str, Any], event_shape: tuple[int, ...]):
    """The source sampler ``x0 ~ p_init`` of a run: ``N(0, I)`` or the configured data source."""
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    if cfg.source is None:
        return GaussianSource(event_shape)
    from ..datasets import load_data_source

    src = load_data_source(cfg.source, **cfg.source_args)
    if tuple(src.event_shape) != tuple(event_shape):
        raise ValueError(f"source {cfg.source!r} has event shape {tuple(src.event_shape)}, "
                         f"the data has {tuple(event_shape)}")
    return src


def check_model(model: nn.Module, event_shape: tuple[int, ...], what: str) -> None:
    """Run ``model`` once on zeros ``(2, *event_shape)``: a wrong shape fails here, clearly.

    In eval mode and without gradients, so that the check leaves no trace (batch-norm statistics).
    """
    was_training = model.training
    with torch.no_grad():
        param = next(model.parameters(), None)
        probe = torch.zeros((2, *event_shape), device=None if param is None else param.device)
        try:
            out = model.eval()(probe, torch.full((2,), 0.5, device=probe.device))
        except (RuntimeError, ValueError, TypeError) as exc:
            raise ValueError(f"data with event shape {tuple(event_shape)} does not fit {what}: {exc}") from exc
        finally:
            model.train(was_training)
        if not isinstance(out, Tensor) or out.shape != probe.shape:
            got = tuple(out.shape[1:]) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"data with event shape {tuple(event_shape)} does not fit {what}: model output "
                             f"shape {got} (model(x, t) must return a tensor shaped like x)")


def build_model(config: TrainConfig, event_shape: tuple[int, ...]) -> nn.Module:
    """The preset network ``config.preset`` for samples of ``event_shape``, checked on one batch."""
    from ..models import build_model as build_preset

    if config.preset is None:
        raise ValueError("preset is None, which means a user-defined model: pass it, train(model, data, config)")
    what = f"preset {config.preset!r} (data {config.data!r})"
    try:
        model = build_preset(config.preset, event_shape=event_shape, **config.model_args)
    except ValueError as exc:
        raise ValueError(f"data {config.data!r} with event shape {tuple(event_shape)} does not fit "
                         f"preset {config.preset!r}: {exc}") from exc
    check_model(model, event_shape, what)
    return model


def model_record(model: nn.Module, config: TrainConfig) -> dict[str, Any]:
    """What a checkpoint says about its network: ``model_config`` (presets) and ``model_source``.

    ``model_source`` is ``{"kind": "preset", "preset": name}`` or, for a user's module, ``{"kind":
    "user", "class": "package.module.Class"}``: such a network cannot be rebuilt from the
    checkpoint alone; loading needs the module (``--model module:factory --weights``).
    """
    if config.preset is not None:
        preset_config: Any = model.config  # a dataclass on every preset network
        return {"model_config": asdict(preset_config), "model_source": {"kind": "preset", "preset": config.preset}}
    cls = type(model)
    return {"model_config": None, "model_source": {"kind": "user", "class": f"{cls.__module__}.{cls.__qualname__}"}}
