#!/bin/bash
# i20a device check: FLCE on CUDA (addmm out_dtype path, GPU tests, peak), then the step per path
set -x
nvidia-smi --query-gpu=name --format=csv,noheader
python - <<'PY' 2>&1 | tee $OUT/probe.txt
import torch, gpt_kernels
from gpt_kernels import fused_linear_cross_entropy as f
m = __import__("gpt_kernels.fused_linear_cross_entropy", fromlist=["x"])
x = torch.randn(8, 16, device="cuda", dtype=torch.bfloat16)
print("fp32 out matmul available:", m._fp32_out_matmul(x), torch.__version__)
PY
timeout 200 python -m pytest tests/test_fused_linear_cross_entropy.py -q -x -m gpu 2>&1 | tail -15 | tee $OUT/flce_gpu_tests.txt
timeout 60 python -m bench.flce_memory --out=$OUT/flce_memory.json 2>&1 | tail -8
timeout 240 python -m bench.train --batch_size=8 --warmup=3 --steps=10 --max_batch=False --out=$OUT/train.json 2>&1 | tail -20
ls $OUT
