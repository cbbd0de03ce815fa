"""Suite-wide test settings."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Run every test on one intra-op thread.

    The suite is mostly small tensors through many small ops; on a 2-core CPU, especially a
    shared one, two intra-op threads cost more in hand-off than they gain (a 3 x 3 Cholesky
    took 20 ms with 2 threads and 5 µs with one on this project's CI machine kind).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def seeded_global_rng():
    """Seed torch's global generator before every test.

    Tests draw their data from their own ``torch.Generator``; what is left on the global one
    (a module's weight initialisation, a shape-only ``torch.randn``) is then the same whatever
    the order, selection (``-k``) or process the test runs in.
    """
    torch.manual_seed(0)
    yield
