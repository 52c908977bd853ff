# Patient timelines as language (gpt.events): the built-in synthetic MEDS dataset (10,000
# patients with a known next-event distribution), a 0.8M-parameter GPT trained on a CPU.
# python train.py config/train_synthetic_ehr.py
# then: python -m gpt.events eval --out_dir=out-ehr
#       python -m gpt.events sample --out_dir=out-ehr --max_subjects=0

dataset = "synthetic_ehr"
out_dir = "out-ehr"

# one patient per row: 128 tokens hold 71% of the patients whole (a longer one is cropped at
# an event); padding is 16% of a batch here, 44% with block_size = 256
block_size = 128
batch_size = 16

n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0

learning_rate = 2e-3
max_iters = 700
lr_decay_iters = 700
warmup_iters = 50
min_lr = 2e-4

eval_interval = 175
eval_iters = 10
log_interval = 25
num_samples = 1
sample_tokens = 120
