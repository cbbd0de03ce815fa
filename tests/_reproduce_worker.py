"""Run under ``torchrun --nproc-per-node 2`` by tests/test_reproduce_distributed.py (not a test module).

``python -m torch.distributed.run --standalone --nproc-per-node 2 tests/_reproduce_worker.py ROOT CASES``
runs ``causal-delta reproduce NAME --quick --set ...`` for every case of the JSON object ``CASES``
(name -> list of ``key=value``) into ``ROOT/NAME``, all in one process group (torch does not
reliably rejoin one after leaving it), and exits non-zero when a run fails.
"""

import json
import sys

import torch

from causal_delta import cli
from causal_delta import distributed as dist

root, cases = sys.argv[1], json.loads(sys.argv[2])
torch.set_num_threads(1)
assert dist.init()
for name, sets in cases.items():
    argv = ["reproduce", name, "--quick", "--no-progress", "--out", f"{root}/{name}"]
    for item in sets:
        argv += ["--set", item]
    status = cli.main(argv)
    if status != 0:
        sys.exit(f"rank {dist.rank()}: reproduce {name} exited with {status}")
dist.shutdown()
