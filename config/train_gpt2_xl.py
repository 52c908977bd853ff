# GPT-2 XL (1.56B parameters) on 8 GPUs of 80 GB with FSDP2, about 0.5M tokens per step.
# torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2_xl.py --dataset=path/to/corpus/
# Per GPU (metered with python -m bench.memory, no CUDA context or workspaces): 41 GiB at
# micro-batch 16 without activation checkpointing; with --activation_checkpointing=True 6 GiB,
# for 24-40 GB cards (about a third more compute).
dataset = "shakespeare"  # a stand-in: pass your corpus (a text file or a folder of .txt files)
tokenizer = "gpt2"
out_dir = "out-gpt2-xl"

n_layer = 48
n_head = 25
n_embd = 1600
block_size = 1024
bias = True
dropout = 0.0

fsdp = True
activation_checkpointing = False
batch_size = 16  # per GPU
gradient_accumulation_steps = 32  # over all 8 processes: 16 x 1024 x 32 = 524,288 tokens a step

# GPT-3's 1.3B settings (Brown et al. 2020, Table 2.1), for about 20 tokens per parameter
learning_rate = 2e-4
min_lr = 2e-5
warmup_iters = 700
max_iters = 60000
lr_decay_iters = 60000
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0

eval_interval = 1000
eval_iters = 100
log_interval = 10
always_save_checkpoint = True
num_samples = 1
