r"""Jacobian-vector products of the generator :math:`f(x_0) = \phi_1(x_0)` through a solver.

The generator is the solution at ``t = 1`` of :math:`\dot x = v(x, t)` started at ``x0``, *as
discretised by the solver* (method and time grid). Ways to differentiate it, all on that grid:

* finite differences (Eq. 5 of arXiv 2602.02793, :func:`jvp_fd`), forward or central, both
  passes as one batch;
* forward mode (:func:`jvp_forward`): the tangent is carried through every solver step, exactly
  the JVP of the discretised map; a model opts into a hand-written forward mode through the
  :class:`ForwardJVP` protocol (else :func:`torch.func.jvp`); with ``P`` probes per sample the
  primal runs once;
* the full Jacobian (:func:`jacobian`) for small event sizes;
* read-outs (:func:`attribute_jvp`): :math:`\Delta y = J_{C \circ f}(x_0) z`, shape ``(n·P, m)``,
  the input of :mod:`causal_delta.dependence`; :func:`readout_gradient` for hold-fixed probes;
* spectra (:func:`top_singular_directions`) and ε sweeps (:func:`eps_sweep`, appendix C).

Units: every function returns :math:`J z` — the derivative along the probe ``z`` — never
:math:`J(\varepsilon z)`. The paper's CelebA script perturbed each sample along one random
direction of norm ``ε = 1e-2``; that is ``probes=1, normalize=True`` here, with responses
``1/ε`` times the paper's (correlations are unaffected by this global scale).

Layout: ``_common`` (checks, probes, result type), ``_fd``, ``_forward``, ``_readouts``,
``_spectral``, ``_sweep`` and ``_plot`` (files and figure of a sweep).
"""

from ._common import MODES, PROBE_KINDS, GeneratorJVP, make_probes
from ._fd import default_eps, jvp_fd
from ._forward import ForwardJVP, generator_jvp, jacobian, jvp_forward
from ._plot import write_eps_sweep
from ._readouts import AttributeJVP, attribute_jvp, pixel_readout, readout_gradient
from ._spectral import SingularDirections, top_singular_directions
from ._sweep import eps_sweep

__all__ = [
    "MODES",
    "PROBE_KINDS",
    "default_eps",
    "make_probes",
    "GeneratorJVP",
    "ForwardJVP",
    "jvp_fd",
    "jvp_forward",
    "generator_jvp",
    "jacobian",
    "AttributeJVP",
    "pixel_readout",
    "attribute_jvp",
    "readout_gradient",
    "SingularDirections",
    "top_singular_directions",
    "eps_sweep",
    "write_eps_sweep",
]
