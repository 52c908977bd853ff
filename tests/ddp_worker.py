"""Run under `torchrun --nproc_per_node=2`: DDP gradients of trainer.forward_backward.

Every rank builds the same model (same seed) and the same 4 micro-batches; rank r takes
micro-batches [2r, 2r+1] and runs trainer.forward_backward with accumulation 2 under DDP over
Gloo. Rank 0 saves the resulting gradients to argv[1] for the test to compare with a single
process that runs all 4 micro-batches with accumulation 4.
"""

import sys
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gpt import trainer  # noqa: E402
from tests.ddp_common import make_model_and_batches  # noqa: E402


def main():
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model, batches = make_model_and_batches()
    ddp_model = DDP(model)
    mine = iter(batches[rank * 2 : rank * 2 + 2])
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    trainer.forward_backward(ddp_model, lambda: next(mine), 4 // world, nullcontext(), scaler,
                           parallel="ddp")
    if rank == 0:
        torch.save({n: p.grad for n, p in model.named_parameters()}, sys.argv[1])
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
