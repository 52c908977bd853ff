"""Autotune plumbing shared by the kernels: tile tables per launch, pruned to the device.

Each autotuned kernel lists its tiles per head dim (or per operand size): a table of
``(BLOCK_..., num_warps, num_stages)`` tuples, each entry commented with why it is there.
Every entry was compiled for sm_80 (A100) and sm_90 (H100) at the model's shapes with
``python -m tools.compile_report``: it fits the chip's shared memory and spills no register.

``triton.autotune`` gets the union of the tables as its configs and a ``Prune`` as its
``early_config_prune``: at the first launch of each autotune key it keeps the configs the
table lists for that launch, then drops those whose shared-memory estimate exceeds what the
device allows one program (99 KB on an RTX 3090/4090, 163 KB on an A100, 227 KB on an H100),
so nothing is compiled only to fail with OutOfResources. The estimate is an upper bound of
what Triton allocates; the compile report checks that for every config it compiles.

With ``GPT_KERNELS_AUTOTUNE=first`` in the environment the prune keeps only the first fitting
config of the launch's table: one compile per launch instead of one per config, for
correctness runs where the fastest config does not matter (``bench.gpu_check``'s tests).

Under ``TRITON_INTERPRET=1`` the kernels offer one config and this never runs (the
interpreter cannot benchmark, so the autotuner must not be given a choice).
"""

import os

import torch
import triton

__all__ = ["Prune", "autotune", "bench", "bucket", "configs_from", "device_smem", "tile_of"]

_TRITON = tuple(int(x) for x in triton.__version__.split(".")[:2])


def bench(kernel_call, quantiles):
    """The autotuner's timer (Triton's ``do_bench``, its default), passed explicitly: Triton
    3.2 asks the GPU driver for its default when ``@triton.autotune`` runs, at import, which
    fails on a machine without a GPU even when the kernels will only be compiled or run in
    the interpreter."""
    from triton.testing import do_bench

    return do_bench(kernel_call, quantiles=quantiles)


def bucket(n):
    """The autotune key for a size that changes between calls (the token count M = B * T, a
    sequence length): its power-of-two bucket, so a new batch size, or a KV-cache decode
    that grows Tk by one each token, reuses the tile benchmarked for its bucket instead of
    benchmarking again. A kernel keys on ``bucket(M)`` (a plain runtime argument) rather than
    M itself; its tiles mask ragged edges, so any size runs correctly with its bucket's tile."""
    return triton.next_power_of_2(max(int(n), 1))


def autotune(configs, key, prune=None):
    """``@triton.autotune(configs, key, prune_configs_by={"early_config_prune": prune})`` with
    the timer passed explicitly (``bench``). Triton 3.2's decorator drops ``do_bench``, so
    there the ``Autotuner`` is built directly, with the same arguments the decorator passes."""
    by = {"early_config_prune": prune} if prune is not None else None
    if _TRITON < (3, 3):
        from triton.runtime.autotuner import Autotuner

        return lambda fn: Autotuner(fn, fn.arg_names, configs, key, None, None,
                                    prune_configs_by=by, do_bench=bench)
    return triton.autotune(configs=configs, key=key, prune_configs_by=by, do_bench=bench)


def device_smem(device):
    """Bytes of shared memory one program may use on CUDA ``device`` (the opt-in maximum).

    A non-CUDA device (the fake CPU tensors a trace or the memory meter may hand an
    autotuner) means the current CUDA device; without CUDA it is a ValueError."""
    device = torch.device(device)
    if device.type != "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"shared memory per block is a property of a CUDA GPU; got a "
                             f"tensor on {device} and no CUDA device is available")
        device = torch.device("cuda", torch.cuda.current_device())
    props = torch.cuda.get_device_properties(device)
    limit = getattr(props, "shared_memory_per_block_optin", None)  # torch >= 2.6
    if limit is None:
        from triton.runtime import driver

        index = device.index if device.index is not None else torch.cuda.current_device()
        limit = driver.active.utils.get_device_properties(index)["max_shared_mem"]
    return int(limit)


def tile_of(config, names):
    """A config as the tuple the tables use: its ``names`` values, num_warps, num_stages."""
    return (*(config.kwargs[n] for n in names), config.num_warps, config.num_stages)


def configs_from(tables, names, **fixed):
    """One ``triton.Config`` per distinct tile in ``tables`` (a dict of lists of tiles; a
    tile is its ``names`` values, num_warps, num_stages, then any flags, which are left out),
    with extra constexprs ``fixed`` (e.g. GROUP_M) in every config."""
    n = len(names) + 2
    tiles = dict.fromkeys(t[:n] for table in tables.values() for t in table)
    return [triton.Config({**dict(zip(names, t[:-2])), **fixed}, num_warps=t[-2],
                          num_stages=t[-1]) for t in tiles]


# Shared memory Triton allocates beyond the operand tiles: scratch for layout conversions and
# cross-warp reductions, and pipeline barriers. The compile report measured up to 4352 B over
# the tiles counted by the kernels' estimates (float32 attention tiles, sm_80 and sm_90).
SCRATCH = 4608


class Prune:
    """``early_config_prune`` for ``triton.autotune``: the configs ``choose`` lists for this
    launch whose shared memory (``smem``) fits the device of tensor argument ``tensor``.

    ``choose(named_args, kwargs)`` returns the list of tiles for the launch (named_args are
    the positional arguments by name, kwargs the launch's keyword constexprs);
    ``tiles(config, named_args, kwargs)`` counts the bytes of the operand tiles a config
    keeps in shared memory. When no listed config fits, the smallest is kept, so the launch
    fails with Triton's own clear error rather than an empty config list.
    """

    def __init__(self, names, choose, tiles, tensor):
        self.names, self.choose, self.tiles, self.tensor = names, choose, tiles, tensor

    def smem(self, config, named_args, kwargs):
        """An upper bound of the bytes of shared memory ``config`` needs: tiles + SCRATCH."""
        return self.tiles(config, named_args, kwargs) + SCRATCH

    def __call__(self, configs, named_args, **kwargs):
        order = {}
        for tile in self.choose(named_args, kwargs):
            order.setdefault(tile, len(order))
        chosen = sorted((c for c in configs if tile_of(c, self.names) in order),
                        key=lambda c: order[tile_of(c, self.names)]) or list(configs)
        limit = device_smem(named_args[self.tensor].device)
        need = {id(c): self.smem(c, named_args, kwargs) for c in chosen}
        fitting = [c for c in chosen if need[id(c)] <= limit]
        if fitting and os.environ.get("GPT_KERNELS_AUTOTUNE") == "first":
            return fitting[:1]  # in the table's order
        return fitting or [min(chosen, key=lambda c: need[id(c)])]
