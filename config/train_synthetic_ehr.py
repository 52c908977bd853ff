# Patient timelines as language (gpt.events): the built-in synthetic MEDS dataset (10,000
# patients with a known next-event distribution), a 0.8M-parameter GPT trained on a CPU.
# python train.py config/train_synthetic_ehr.py
# then: python -m gpt.events eval --out_dir=out-ehr
#       python -m gpt.events sample --out_dir=out-ehr --code=ICD10CM//I10 --days=365

dataset = "synthetic_ehr"
out_dir = "out-ehr"

# one patient per row: 256 tokens hold about 95% of the patients whole
block_size = 256
batch_size = 16

n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0

learning_rate = 2e-3
max_iters = 1500
lr_decay_iters = 1500
warmup_iters = 100
min_lr = 2e-4

eval_interval = 250
eval_iters = 20
log_interval = 50
num_samples = 1
sample_tokens = 120
