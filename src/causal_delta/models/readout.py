r"""Trained attribute read-outs with named outputs.

:class:`AttributeClassifier` is what :func:`causal_delta.classifier_training.load_classifier`
returns: a network plus the names of its outputs, its head and the target scaling.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["HEADS", "AttributeClassifier"]

HEADS = ("binary", "regression")
"""Read-out heads: ``"binary"`` (logits of 0/1 labels) or ``"regression"`` (attribute values)."""


class AttributeClassifier(nn.Module):
    r"""A trained read-out with named outputs: ``forward(x) = (σ ⊙ net(x) + μ)[:, index]``.

    For binary heads ``σ = 1, μ = 0`` (outputs are logits); for regression heads the outputs
    are attribute values. ``forward_jvp(x, dx)`` returns the outputs and ``J dx`` (the network's
    own ``forward_jvp`` when it has one, else :func:`torch.func.jvp`), so
    :func:`causal_delta.jvp.attribute_jvp` uses the fast path.

    Attributes:
        net: the network, (B, *event) -> (B, m_all).
        attributes: names of the outputs, in order.
        head: ``"binary"`` or ``"regression"``.
    """

    def __init__(self, net: nn.Module, attributes: Sequence[str], head: str = "binary", *,
                 shift: Tensor | None = None, scale: Tensor | None = None,
                 index: Sequence[int] | None = None, all_attributes: Sequence[str] | None = None) -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        self.net = net
        self.head = head
        self.all_attributes = tuple(all_attributes if all_attributes is not None else attributes)
        m = len(self.all_attributes)
        self.register_buffer("shift", torch.zeros(m) if shift is None else shift.detach().float().clone())
        self.register_buffer("scale", torch.ones(m) if scale is None else scale.detach().float().clone())
        self.index = None if index is None else list(index)
        self.attributes = tuple(attributes)

    def _affine(self, out: Tensor, *, derivative: bool = False) -> Tensor:
        out = out * self.scale.to(out.dtype) if self.head == "regression" else out
        if self.head == "regression" and not derivative:
            out = out + self.shift.to(out.dtype)
        return out if self.index is None else out[:, self.index]

    def forward(self, x: Tensor) -> Tensor:
        """Outputs ``(B, len(attributes))``."""
        return self._affine(self.net(x))

    def forward_jvp(self, x: Tensor, dx: Tensor) -> tuple[Tensor, Tensor]:
        """Outputs and their directional derivative ``J_x C · dx``; both ``(B, len(attributes))``."""
        fj = getattr(self.net, "forward_jvp", None)
        y, dy = fj(x, dx) if fj is not None else torch.func.jvp(self.net, (x,), (dx,))
        return self._affine(y), self._affine(dy, derivative=True)

    def select(self, attributes: Sequence[str]) -> AttributeClassifier:
        """The same read-out restricted to ``attributes`` (in that order; shares the network).

        Raises:
            ValueError: a name the classifier does not output (the message lists its outputs).
        """
        names = [attributes] if isinstance(attributes, str) else list(attributes)
        missing = [a for a in names if a not in self.attributes]
        if missing or not names:
            raise ValueError(f"classifier outputs {list(self.attributes)} do not include {missing or names}; "
                             f"train it on those attributes or choose among its outputs")
        base = self.index if self.index is not None else list(range(len(self.all_attributes)))
        idx = [base[self.attributes.index(a)] for a in names]
        out = AttributeClassifier(self.net, names, self.head, shift=self.shift, scale=self.scale, index=idx,
                                  all_attributes=self.all_attributes)
        return out.train(self.training)

    def extra_repr(self) -> str:
        return f"head={self.head!r}, attributes={list(self.attributes)}"
