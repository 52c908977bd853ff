"""Run under `torchrun --nproc_per_node=2`: FSDP2 gradients of trainer.forward_backward.

Like ddp_worker.py: every rank builds the same model and the same 4 micro-batches, rank r
takes micro-batches [2r, 2r+1] with accumulation 2, here with the model sharded by
gpt.parallel.shard (float32, no mixed precision) over Gloo. Rank 0 saves the full gradients
(gathered from the shards) and the losses to argv[1].

argv: out_path, kernels ("torch" | "triton"), activation checkpointing ("0" | "1").
"""

import sys
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gpt import trainer  # noqa: E402
from gpt.parallel import shard  # noqa: E402
from tests.ddp_common import make_model_and_batches  # noqa: E402


def main():
    out, backend, ac = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model, batches = make_model_and_batches(kernels=backend)
    model.activation_checkpointing = ac
    shard(model)
    tied = model.lm_head.weight is model.transformer.wte.weight
    mine = iter(batches[rank * 2: rank * 2 + 2])
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loss = trainer.forward_backward(model, lambda: next(mine), 4 // world, nullcontext(), scaler,
                                  parallel="fsdp")
    grads = {n: p.grad.full_tensor() for n, p in model.named_parameters()}  # collective
    if rank == 0:
        torch.save({"grads": grads, "loss": loss.detach(), "tied": tied}, out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
