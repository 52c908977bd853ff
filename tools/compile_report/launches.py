"""Launches recorded on the stand-in GPU, expanded into the configs each autotuner offers there.

``collect_jobs`` runs every case under ``chips.stand_in_gpu`` for every target and dtype,
turns each recorded ``launch(kernel)[grid](...)`` into the configs its autotuner offers at
those arguments (after its own pruning, which reads the stand-in's shared memory), and keys
each config as Triton keys its binary (``triton_compile.spec_key``): one compile job per
distinct binary, with the cases and dtypes that use it.
"""

import inspect
import json
import math
import re
from dataclasses import dataclass

import triton
from triton.runtime.jit import KernelInterface

from gpt.errors import UsageError
from gpt.hardware import dtype_named
from tools.compile_report.cases import KERNEL_MODULES, kernel_module
from tools.compile_report.chips import DTYPES, stand_in_gpu
from tools.compile_report.triton_compile import describe, jit_function, spec_key

__all__ = ["Launch", "launch_of", "kernel_modules", "launched_kernels", "parse_inject",
           "offered_configs", "largest", "collect_jobs", "distinct", "unreported",
           "config_text"]


def kernel_modules():
    return [kernel_module(name) for name in KERNEL_MODULES]


def launched_kernels(module):
    """Names of the module's Triton kernels that its Python code launches
    (``launch(name)[grid](``, see ``gpt_kernels/_library.py``)."""
    src = inspect.getsource(module)
    return [name for name, obj in vars(module).items()
            if isinstance(obj, KernelInterface) and re.search(rf"\blaunch\({name}\)\[", src)]


@dataclass
class Launch:
    module: str
    name: str
    kernel: object
    args: tuple
    kwargs: dict


def launch_of(kernel, args, kwargs):
    """A recorded ``(kernel, grid, args, kwargs)`` as a Launch named after its kernel."""
    fn = jit_function(kernel).fn
    return Launch(fn.__module__, fn.__name__, kernel, args, kwargs)


def config_text(config):
    """A config label as ``NAME=VALUE ...`` (the report's and the log's way to name it)."""
    return " ".join(f"{k}={v}" for k, v in config.items())


def parse_inject(text):
    """"KERNEL:NAME=VALUE,..." -> (kernel name, {constexpr: int}, {num_warps/num_stages: int})."""
    if not text:
        return None
    name, sep, rest = text.partition(":")
    try:
        pairs = dict(item.split("=", 1) for item in rest.split(",")) if sep else None
        values = {k.strip(): int(v) for k, v in pairs.items()}
    except (AttributeError, ValueError):
        raise UsageError(f"--inject expects KERNEL:NAME=INT,NAME=INT,..., got {text!r}") from None
    options = {k: values.pop(k) for k in ("num_warps", "num_stages") if k in values}
    return name.strip(), values, options


def offered_configs(launch, inject=None):
    """[{label, kwargs, smem (estimate or None), injected}] for one recorded launch: every
    config its autotuner offers at these arguments (after its own pruning, which reads the
    stand-in device), or the launch itself for a kernel that is not autotuned."""
    kernel = launch.kernel
    if not hasattr(kernel, "configs"):
        label = {k: v for k, v in launch.kwargs.items() if k.startswith(("BLOCK", "GROUP"))}
        label.update(num_warps=launch.kwargs.get("num_warps", 4),
                     num_stages=launch.kwargs.get("num_stages", 3))
        return [dict(label=label, kwargs=dict(launch.kwargs), smem=None, injected=False)]
    nargs = dict(zip(kernel.arg_names, launch.args))
    prune = getattr(kernel, "early_config_prune", None)
    configs = [(c, False) for c in (prune(kernel.configs, nargs, **launch.kwargs) if prune
                                    else kernel.configs)]
    if inject and inject[0] == launch.name:
        configs.append((triton.Config(inject[1], **inject[2]), True))
    estimate = getattr(prune, "smem", None)
    return [dict(label={**cfg.kwargs, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages},
                 kwargs={**launch.kwargs, **cfg.all_kwargs()},
                 smem=estimate(cfg, nargs, launch.kwargs) if estimate else None,
                 injected=injected)
            for cfg, injected in configs]


def largest(offered):
    """The offered config most likely to spill or overflow: the most tile elements per warp,
    then the most shared memory. ``--subset=ci`` compiles this one per launch (and any
    injected config); the full report compiles them all."""
    def weight(o):
        tile = math.prod(v for k, v in o["label"].items() if k.startswith("BLOCK"))
        return (tile / o["label"]["num_warps"], o["smem"] or 0, o["label"]["num_stages"])

    regular = [o for o in offered if not o["injected"]]
    return [max(regular, key=weight)] + [o for o in offered if o["injected"]]


def _specialisation(launch, config_label):
    """The launch's own constexprs (those that are not part of the config)."""
    return {k: v for k, v in launch.kwargs.items()
            if k.isupper() and k not in config_label and not k.startswith("num_")}


def collect_jobs(cases, dtypes, targets, inject, pick="all"):
    """Capture every launch and expand it into compile jobs, one per distinct binary.

    ``pick``: "all" offered configs, or the "largest" per launch. Returns ({spec key: job},
    offered) where a job knows where it is used (cases x dtypes) and ``offered`` lists every
    (kernel, target, dtype, specialisation, config) an autotuner offers, compiled or not."""
    jobs, offered_all = {}, []
    for target in targets:
        for dtype_label in dtypes:
            dtype_name, precision = DTYPES[dtype_label]
            for case in cases:
                with stand_in_gpu(target, precision) as launches:
                    case.run(dtype_named(dtype_name))
                    expanded = [(launch, offered_configs(launch, inject))
                                for launch in (launch_of(k, a, kw) for k, _, a, kw in launches)]
                for launch, offered in expanded:
                    spec = _specialisation(launch, offered[0]["label"])
                    offered_all += [dict(kernel=launch.name, target=target.name,
                                         dtype=dtype_label, specialisation=spec,
                                         config=o["label"]) for o in offered if not o["injected"]]
                    descs = [describe(a) for a in launch.args]
                    fn = jit_function(launch.kernel)
                    for o in (offered if pick == "all" else largest(offered)):
                        key = spec_key(fn, descs, o["kwargs"], target.capability)
                        job = jobs.get(key)
                        if job is None:
                            job = jobs[key] = dict(
                                key=key, module=launch.module, kernel=launch.name,
                                file=launch.module.removeprefix("gpt_kernels.") + ".py",
                                target=target.name, config=o["label"], specialisation=spec,
                                smem_limit=target.smem, smem_estimate=o["smem"],
                                injected=o["injected"], args=descs, kwargs=o["kwargs"],
                                uses=[])
                        use = {"op": case.op, "case": case.label, "dtype": dtype_label}
                        if use not in job["uses"]:
                            job["uses"].append(use)
    return jobs, offered_all


def _entry(kernel, target, dtype, specialisation, config):
    return (kernel, target, dtype, json.dumps(specialisation, sort_keys=True),
            json.dumps(config, sort_keys=True))


def distinct(offered):
    """``offered`` without repeats (a config offered at several cases counts once)."""
    seen, out = set(), []
    for o in offered:
        e = _entry(**o)
        if e not in seen:
            seen.add(e)
            out.append(o)
    return out


def unreported(offered, full):
    """The offered configs that the full report ``full`` did not compile cleanly (a table
    edited without running the report again)."""
    clean = {_entry(r["kernel"], r["target"], u["dtype"], r["specialisation"], r["config"])
             for r in full["records"] if not r["problems"] for u in r["uses"]}
    return [o for o in distinct(offered) if _entry(**o) not in clean]


