"""Train a GPT. One process:

    python train.py                                   # small char-level GPT on the embedded Shakespeare
    python train.py --dataset=tinyshakespeare --compile=True
    python train.py config/train_shakespeare_char.py --max_iters=1000
    python train.py --init_from=resume                # continue from out_dir's checkpoint
    python train.py --init_from=gpt2 --dataset=shakespeare   # fine-tune GPT-2

Several processes on one or more machines (DDP; NCCL on GPUs, Gloo on CPUs; FSDP with
--fsdp=True):

    torchrun --standalone --nproc_per_node=8 train.py --gradient_accumulation_steps=40

Every option can be overridden as --name=value (nanoGPT's names; `python train.py --help`
lists them, gpt/train_config.py declares them); unknown names and values of the wrong type
are errors. The training loop is the library gpt/trainer.py; the checkpoint and the other
files of out_dir are read and written by gpt/checkpoint.py.
"""

from gpt.cli import parse, run_main
from gpt.trainer import OPTIONS, train


def main(argv=None):
    cfg = parse(argv, OPTIONS, prog="train.py", description=__doc__.split("\n")[0])
    return train(cfg)  # logs and prints the samples as it goes; returns the summary


if __name__ == "__main__":
    run_main(main, "train.py")
