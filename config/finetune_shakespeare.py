# nanoGPT's fine-tuning recipe: GPT-2 XL (1.56B parameters) on Shakespeare, a few minutes on
# one large GPU. GPT-2's tokenizer replaces the dataset's default; block_size crops the context.
# python train.py config/finetune_shakespeare.py
# python train.py config/finetune_shakespeare.py --init_from=gpt2 --block_size=256   # smaller
out_dir = "out-shakespeare"
dataset = "tinyshakespeare"
init_from = "gpt2-xl"  # or gpt2, gpt2-medium, gpt2-large, or a local Hugging Face GPT-2 folder
eval_interval = 5
eval_iters = 40
always_save_checkpoint = False  # only when val improves: a few steps overfit quickly

# 1 x 32 x 1024 = 32,768 tokens per step; Shakespeare is ~300k GPT-2 tokens: 1 epoch ~ 9 steps
batch_size = 1
gradient_accumulation_steps = 32
block_size = 1024
max_iters = 20

# fine-tune at a constant small learning rate
learning_rate = 3e-5
decay_lr = False
dropout = 0.0
