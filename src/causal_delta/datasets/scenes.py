r"""Rendered scenes whose attributes follow a known structural causal model (no files).

One soft (anti-aliased) disc on a plain background, ``(3, H, W)`` RGB in ``[-1, 1]``. Each
attribute has a *render parameter* ``u ∈ (0, 1)`` mapped linearly to its range
(:data:`RANGES`):

=============  ==========================================================================
``size``       disc radius, 0.12–0.32 of the image side
``hue``        phase ``h`` of the smooth palette ``0.5 + 0.5 cos 2π(h + (0, 1/3, 2/3))``, 0–0.75
``brightness`` factor on the disc colour, 0.3–1.0
``background`` grey level of the background, 0.0–0.45
``x``, ``y``   centre of the disc, 0.3–0.7 of the side
=============  ==========================================================================

Pixels: ``m = σ((r - dist) / softness)`` (soft edge, so images vary smoothly with every
parameter), ``image = background (1 - m) + brightness · palette(h) · m``, scaled to ``[-1, 1]``.

Attribute values come from :class:`causal_delta.datasets.scm.SCM` (standardised, one column
per DAG node, assigned to the scene attributes in ``attributes``) through the fixed smooth map
``u = sigmoid(gain · a)``; with ``independent=True`` every ``u`` is drawn uniformly on (0, 1)
instead (to train a read-out that cannot learn the SCM's correlations). Attributes not in the
SCM stay at ``u = 0.5`` unless listed in ``nuisance`` (then independent uniform).

Registered as the data source ``"scenes"``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from .._validation import check_positive_int
from . import DataSource

__all__ = ["ATTRIBUTES", "RANGES", "render", "SceneSource", "scene_source"]

ATTRIBUTES = ("size", "hue", "brightness", "background", "x", "y")
RANGES: dict[str, tuple[float, float]] = {
    "size": (0.12, 0.32), "hue": (0.0, 0.75), "brightness": (0.3, 1.0), "background": (0.0, 0.45),
    "x": (0.3, 0.7), "y": (0.3, 0.7),
}
"""Render-parameter range of each attribute (``u = 0`` to ``u = 1``)."""

_PHASES = (0.0, 1.0 / 3.0, 2.0 / 3.0)


def _param(u: Mapping[str, Tensor], name: str, n: int, dtype: torch.dtype) -> Tensor:
    lo, hi = RANGES[name]
    v = u.get(name)
    v = torch.full((n,), 0.5, dtype=dtype) if v is None else v.to(dtype)
    return (lo + (hi - lo) * v).reshape(n, 1, 1)


def render(u: Mapping[str, Tensor], *, n: int | None = None, image_size: int = 32, softness: float = 0.6,
           dtype: torch.dtype = torch.float32) -> Tensor:
    """Render scenes from render parameters ``u[name]`` ``(n,)`` in [0, 1]; missing ones are 0.5.

    Returns:
        ``(n, 3, image_size, image_size)`` in ``[-1, 1]``.
    """
    unknown = sorted(set(u) - set(ATTRIBUTES))
    if unknown:
        raise ValueError(f"attribute names must be among {list(ATTRIBUTES)}, got {unknown}")
    check_positive_int("image_size", image_size)
    if n is None:
        if not u:
            raise ValueError("give n when no attribute is set")
        n = next(iter(u.values())).shape[0]
    p = {name: _param(u, name, n, dtype) for name in ATTRIBUTES}
    side = image_size
    coords = (torch.arange(side, dtype=dtype) + 0.5) / side
    yy, xx = coords.reshape(1, side, 1), coords.reshape(1, 1, side)
    dist = torch.sqrt((xx - p["x"]) ** 2 + (yy - p["y"]) ** 2) * side  # pixels
    mask = torch.sigmoid((p["size"] * side - dist) / softness).unsqueeze(1)  # (n, 1, H, W)
    phase = torch.tensor(_PHASES, dtype=dtype).reshape(1, 3, 1, 1)
    colour = 0.5 + 0.5 * torch.cos(2 * math.pi * (p["hue"].unsqueeze(1) + phase))  # (n, 3, 1, 1)
    disc = p["brightness"].unsqueeze(1) * colour
    bg = p["background"].unsqueeze(1)
    image = bg * (1 - mask) + disc * mask
    return 2.0 * image - 1.0


class SceneSource(DataSource):
    """Scenes with SCM-driven attributes (see the module docstring).

    Arguments:
        graph: DAG, known-graph name or spec (its node order is the attribute order).
        attributes: one scene attribute per DAG node, in the DAG's node order.
        seed: the SCM's seed (weights, mechanisms, standardisation); rows come from ``sample``'s generator.
        mechanism, noise, strength: of the SCM (:class:`causal_delta.datasets.scm.SCM`).
        independent: draw every attribute's ``u`` uniformly instead (no causal structure).
        nuisance: other attributes drawn uniformly and independently (not read out).
        gain: ``u = sigmoid(gain · a)``.
        image_size, softness: rendering.
    """

    def __init__(self, graph: Any = "fork", attributes: Sequence[str] = ("size", "hue", "brightness"), *,
                 seed: int = 0, mechanism: str = "mixed", noise: str = "mixed", strength: float = 1.0,
                 independent: bool = False, nuisance: Sequence[str] = (), gain: float = 1.2,
                 image_size: int = 32, softness: float = 0.6) -> None:
        from .scm import SCM

        self.scm = SCM(graph, mechanism=mechanism, noise=noise, strength=strength, seed=seed, n_reference=100_000)
        attributes = tuple(attributes)
        nuisance = tuple(nuisance)
        bad = [a for a in (*attributes, *nuisance) if a not in ATTRIBUTES]
        if bad:
            raise ValueError(f"attributes must be among {list(ATTRIBUTES)}, got {bad}")
        if len(attributes) != self.scm.dim or len(set(attributes)) != len(attributes):
            raise ValueError(f"attributes must name {self.scm.dim} distinct scene attributes, one per graph node "
                             f"{list(self.scm.names)}, got {list(attributes)}")
        if set(nuisance) & set(attributes):
            both = sorted(set(nuisance) & set(attributes))
            raise ValueError(f"nuisance must not repeat an SCM attribute, got {both}")
        if not (isinstance(gain, (int, float)) and gain > 0):
            raise ValueError(f"gain must be > 0, got {gain!r}")
        check_positive_int("image_size", image_size)
        self.attributes, self.nuisance = attributes, nuisance
        self.independent, self.gain = bool(independent), float(gain)
        self.image_size, self.softness = int(image_size), float(softness)
        self.names = attributes
        self.name = "scenes"
        self.event_shape = (3, self.image_size, self.image_size)

    def sample_labelled(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``(images (n, 3, H, W) float32, u (n, m) float32)``: scenes and their SCM attributes' render parameters."""
        check_positive_int("n", n)
        if self.independent:
            u = torch.rand(n, len(self.attributes), generator=generator, dtype=torch.float64)
        else:
            u = torch.sigmoid(self.gain * self.scm.sample(n, generator))
        params = {a: u[:, c] for c, a in enumerate(self.attributes)}
        for a in self.nuisance:
            params[a] = torch.rand(n, generator=generator, dtype=torch.float64)
        images = render(params, n=n, image_size=self.image_size, softness=self.softness, dtype=torch.float64)
        return images.float(), u.float()

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.sample_labelled(n, generator)[0]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "attributes": list(self.attributes), "nuisance": list(self.nuisance),
                "independent": self.independent, "scm": self.scm.describe()}


def scene_source(graph: Any = "fork", *, attributes: Sequence[str] = ("size", "hue", "brightness"),
                 **kwargs: Any) -> SceneSource:
    """Data source ``"scenes"``: :class:`SceneSource` (keyword arguments as there)."""
    return SceneSource(graph, attributes, **kwargs)
