"""The compile pool: every distinct compile job once, in worker processes, cached on disk.

A job (``launches.collect_jobs``) is one binary: kernel x specialisation x config x target.
Its result (``triton_compile.compile_launch``) is cached under its spec key, which changes
with Triton's version, the kernel's source and line numbers, the arguments' specialisation,
the options and the target, so an edited kernel compiles again and nothing else does.
"""

import hashlib
import json
import os
import tempfile
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

from gpt.files import write_text
from tools.compile_report.chips import TARGETS
from tools.compile_report.launches import config_text
from tools.compile_report.triton_compile import compile_launch

__all__ = ["compile_jobs"]


def _cache_file(cache_dir, key):
    return Path(cache_dir).expanduser() / (hashlib.sha256(key.encode()).hexdigest() + ".json")


def _cached(cache_dir, key):
    path = _cache_file(cache_dir, key)
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return rec if rec.get("key") == key else None


def _store(cache_dir, key, result):
    write_text(_cache_file(cache_dir, key), json.dumps({"key": key, **result}))


def _compile_job(job):
    target = TARGETS[job["target"]]
    return compile_launch(job["module"], job["kernel"], job["args"], job["kwargs"],
                          target.capability)


def _worker_init():
    warnings.simplefilter("ignore")


def compile_jobs(jobs, workers, cache, cache_dir):
    """Compile every job (results cached on disk by their spec key); returns {key: result}."""
    results, todo = {}, []
    for key, job in jobs.items():
        hit = _cached(cache_dir, key) if cache else None
        if hit is not None:
            hit.pop("key")
            results[key] = {**hit, "cached": True}
        else:
            todo.append(job)
    print(f"{len(jobs)} distinct compiles: {len(results)} from the cache, {len(todo)} to run "
          f"on {workers} process(es)", flush=True)
    # a fresh Triton cache: every compile happens for real, and its seconds are its own
    with tempfile.TemporaryDirectory(prefix="gpt-triton-compile-cache-") as tmp:
        env = {"TRITON_CACHE_DIR": tmp}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                                     initializer=_worker_init) as pool:
                futures = {pool.submit(_compile_job, job): job for job in todo}
                for i, fut in enumerate(as_completed(futures), 1):
                    job = futures[fut]
                    result = fut.result()
                    results[job["key"]] = result
                    _store(cache_dir, job["key"], result)
                    print(f"[{i}/{len(todo)}] {_job_line(job, result)}", flush=True)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    return results


def _job_line(job, r):
    dtypes = ",".join(sorted({u["dtype"] for u in job["uses"]}))
    head = f"{job['target']} {job['kernel']} [{dtypes}] {config_text(job['config'])}"
    if not r["ok"]:
        return f"{head}: FAILED {r['error'][:200]}"
    return (f"{head}: {r['registers']} regs, {r['spill_stores']} B spilled, "
            f"{r['shared'] / 1024:.0f} KB smem, {r['compile_s']:.1f} s")

