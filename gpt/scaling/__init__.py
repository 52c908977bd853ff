"""Scaling laws: count a model, plan a compute budget (Chinchilla), measure an IsoFLOP sweep.

    python -m gpt.scaling count --preset=gpt2 --tokens=10e9 --hours=24 --gpu=A100
    python -m gpt.scaling plan --compute=1e21 --dataset_tokens=300e9
    python -m gpt.scaling plan --gpu_hours=1000 --gpu=H100 --mfu=0.4
    python -m gpt.scaling sweep --out_dir=out/scaling     # trains a CPU-sized IsoFLOP sweep

`count` gives a GPTConfig's parameters, training FLOPs per token, the memory of its weights,
gradients and AdamW state, and the throughput a run of D tokens in H hours needs. `plan`
turns a compute budget C into a model size N and a number of tokens D by the three rules of
Hoffmann et al. 2022 ("Chinchilla"), with the loss each is predicted to reach and the nearest
GPTConfig one can build. `sweep` measures the same thing on this machine: at each of several
budgets it trains models of several sizes for C / (6 N) tokens each with train.py, fits a
parabola of the final validation loss against log N per budget, and fits N_opt = k * C^a
across budgets. `python -m gpt.scaling <command> --help` lists each command's options.

Conventions. Chinchilla counts N as all parameters and C = 6 N D; `plan` follows it. The
sweep counts N as the model's non-embedding parameters (`GPT.num_params(non_embedding=True)`:
all but the position table; the token embedding stays because it is also the output layer),
because those are exactly the weights a token is multiplied by, so 6 N D is the sweep's real
matmul compute; Kaplan et al. 2020 leave out both embeddings, Chinchilla neither, and at a few
thousand parameters the choice moves the small models noticeably.

One module per job: `laws.py` the formulas and fits, `sweep.py` the sweep that trains,
`plot.py` its picture, `cli.py` the commands (`__main__.py` runs it). Their public names are
importable from `gpt.scaling` itself, as they were when this was one file.
"""

from gpt.flops import flops_per_token, param_counts
from gpt.scaling.cli import (COMMANDS, COUNT_OPTIONS, HARDWARE_OPTIONS, MODEL_OPTIONS,
                             PLAN_OPTIONS, PROG, config_from_options, count, main,
                             peak_from_options, plan, print_count, print_plan)
from gpt.scaling.laws import (APPROACH1_A, APPROACH1_K, ASPECT_MAX, ASPECT_MIN,
                              ASPECT_PREFERRED, BYTES_PER_DTYPE, CHINCHILLA_A, CHINCHILLA_ALPHA,
                              CHINCHILLA_B, CHINCHILLA_BETA, CHINCHILLA_E, CHINCHILLA_TABLE3,
                              COUNT_TOLERANCE, GPU_PEAK_FLOPS, HEAD_DIM, approach1,
                              approach1_for_params, approach3, chinchilla_loss,
                              fit_isoflop_minimum, fit_power_law, fit_sweep, nearest_config,
                              throughput, tokens_per_param_rule, training_memory)
from gpt.scaling.plot import plot_sweep
from gpt.scaling.sweep import (DEFAULT_BUDGETS, DEFAULT_SIZES, RUN_KEYS, SWEEP_OPTIONS, evaluate,
                               plan_runs, print_sweep_fit, print_sweep_plan, run_one, sweep,
                               trainer_config)

__all__ = [
    # laws.py (and gpt.flops's counts)
    "param_counts", "flops_per_token", "training_memory", "throughput", "GPU_PEAK_FLOPS",
    "BYTES_PER_DTYPE", "CHINCHILLA_TABLE3", "APPROACH1_A", "APPROACH1_K", "CHINCHILLA_E",
    "CHINCHILLA_A", "CHINCHILLA_B", "CHINCHILLA_ALPHA", "CHINCHILLA_BETA", "chinchilla_loss",
    "approach1", "approach1_for_params", "approach3", "tokens_per_param_rule", "HEAD_DIM",
    "ASPECT_MIN", "ASPECT_MAX", "ASPECT_PREFERRED", "COUNT_TOLERANCE", "nearest_config",
    "fit_isoflop_minimum", "fit_power_law", "fit_sweep",
    # sweep.py, plot.py
    "DEFAULT_BUDGETS", "DEFAULT_SIZES", "SWEEP_OPTIONS", "RUN_KEYS", "plan_runs",
    "trainer_config", "evaluate", "run_one", "sweep", "print_sweep_plan", "print_sweep_fit",
    "plot_sweep",
    # cli.py
    "PROG", "MODEL_OPTIONS", "HARDWARE_OPTIONS", "COUNT_OPTIONS", "PLAN_OPTIONS",
    "config_from_options", "peak_from_options", "count", "print_count", "plan", "print_plan",
    "COMMANDS", "main",
]
