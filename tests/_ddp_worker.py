"""Run under ``torchrun --nproc-per-node 2`` by tests/test_distributed.py (not a test module).

``python -m torch.distributed.run --standalone --nproc-per-node 2 tests/_ddp_worker.py ROOT`` trains
the runs the test compares with single-process ones and writes ``ROOT/ddp.json`` (rank 0). A process
group is set up once per process (torch does not reliably rejoin after leaving), so the CLI's own
join-and-leave is tested by a separate ``torchrun -m causal_delta.cli train`` launch.
"""

import json
import sys

import torch

from causal_delta import cli
from causal_delta import distributed as dist
from causal_delta.training import train

sys.path.insert(0, __file__.rpartition("/")[0])
from _ddp_common import UserNet, small_config, user_data

root = sys.argv[1]
torch.set_num_threads(1)
assert dist.init()  # one process group for the whole worker (the CLI leaves it to its owner)
# `jvp` of the checkpoint that `torchrun -m causal_delta.cli train` wrote: rank 0 locks, gathers, writes.
assert cli.main(["jvp", "--checkpoint", f"{root}/cli_train", "-n", "7", "--probes", "2", "--steps", "3",
                 "--batch-size", "2", "--dtype", "float64", "--save-samples", "--out", f"{root}/jvp_2"]) == 0
assert cli.main(["mixture", "--out", f"{root}/mixture"]) == 2  # not a multi-process command: refused
assert cli.main(["sample", "--checkpoint", f"{root}/cli_train", "-n", "7", "--steps", "3", "--batch-size", "3",
                 "--device", "cpu", "--out", f"{root}/samples_2.npy"]) == 0
full = train(small_config(f"{root}/ddp", steps=6), progress=False)
train(small_config(f"{root}/ddp_resume", steps=3), progress=False)
resumed = train(small_config(f"{root}/ddp_resume", steps=6), resume=True, progress=False)
# A checkpoint written by one process, continued by two.
from_one = train(small_config(f"{root}/from_one", steps=6), resume=f"{root}/single/checkpoints/step-00000003",
                 progress=False)
torch.manual_seed(0)
# A user's module on a torch Dataset: each rank reads only its rows' items.
user = train(UserNet(), torch.utils.data.TensorDataset(user_data()), small_config(f"{root}/ddp_user", steps=4),
             progress=False)
# jvp-style sharding helpers: each rank's block, gathered in rank order.
mine = dist.shard(7)
gathered = dist.all_gather(torch.arange(7.0)[mine.start:mine.stop] * 2)
total = dist.all_reduce(torch.tensor([float(len(mine))]), "sum")
# map_rows: fn sees this rank's block only; tuples gathered element-wise in global order
blocks = []
squares, ranks = dist.map_rows(lambda r: (blocks.append(r) or torch.arange(r.start, r.stop) ** 2,
                                          torch.full((len(r), 2), dist.rank())), 5)
# on_main: rank 0 alone runs it (a file the others then read); its failure stops every rank alike
ran = []
word = dist.on_main(lambda: ran.append(1) or {"rank": dist.rank()})
try:
    dist.on_main(lambda: int("not a number"))
    failure = None
except ValueError as exc:
    failure = str(exc)
if dist.is_main():
    with open(f"{root}/ddp.json", "w") as fh:
        json.dump({"world": dist.world_size(), "full": full.losses, "resumed": resumed.losses,
                   "resumed_from": resumed.resumed_from, "from_one": from_one.losses, "user": user.losses,
                   "gathered": gathered.tolist(), "total": float(total), "blocks": [[b.start, b.stop] for b in blocks],
                   "squares": squares.tolist(), "ranks": ranks.tolist(), "on_main": word, "ran": ran,
                   "failure": failure}, fh)
# the other rank's view, written to its own file (report writers stay quiet off rank 0)
if not dist.is_main():
    with open(f"{root}/ddp_rank1.json", "w") as fh:
        json.dump({"blocks": [[b.start, b.stop] for b in blocks], "squares": squares.tolist(), "on_main": word,
                   "ran": ran, "failure": failure}, fh)
    from causal_delta.report import write_json
    write_json(f"{root}/written_by_rank1.json", {"a": 1})
dist.shutdown()
