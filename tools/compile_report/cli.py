"""The command line of the compile report: its options, and a run from cases to the verdict.

``python -m tools.compile_report`` runs ``main`` (``__main__.py``); what the report is and
how it works is the package's docstring (``tools/compile_report/__init__.py``).
"""

import json
import os
import sys
import time
from datetime import date
from pathlib import Path

import tools.compile_report as package
from bench.common import git_commit, host_description, versions
from gpt.cli import Opt, parse
from gpt.errors import UsageError
from gpt.files import write_text
from tools.compile_report.cases import OPS, build_cases
from tools.compile_report.chips import DTYPES, TARGETS
from tools.compile_report.launches import (collect_jobs, config_text, distinct, kernel_modules,
                                           launched_kernels, parse_inject, unreported)
from tools.compile_report.pool import compile_jobs
from tools.compile_report.report import (RESULTS_DIR, SCHEMA, full_report_for, make_records,
                                         newest_reports, report_md, summarise, summary_md,
                                         totals, update_readme)

__all__ = ["PROG", "OPTIONS", "run", "main"]

PROG = "python -m tools.compile_report"
REPO_ROOT = Path(__file__).resolve().parents[2]

OPTIONS = {
    "what": dict(
        subset=Opt("full", "full: every preset shape and variant; ci: GPT-2 small's shapes, "
                           "the largest config of each launch", choices=("full", "ci")),
        ops=Opt(tuple(OPS), "comma-separated kernel files, or all", choices=tuple(OPS)),
        dtypes=Opt(tuple(DTYPES), "comma-separated dtypes, or all", choices=tuple(DTYPES)),
        targets=Opt(("sm_80", "sm_90"), "comma-separated chips, or all", choices=tuple(TARGETS)),
        configs=Opt("auto", "which offered configs to compile: all, or the largest of each launch "
                            "(the one most likely to spill); auto: all for full, largest for ci",
                    choices=("auto", "all", "largest")),
        inject=Opt("", "KERNEL:NAME=VALUE,...: also compile this config wherever KERNEL is "
                       "autotuned (e.g. _attn_fwd:BLOCK_M=256,BLOCK_N=256,num_warps=4,"
                       "num_stages=3)"),
    ),
    "run": dict(
        workers=Opt(2, "compiler processes", ge=1),
        cache=Opt(True, "reuse the result of an identical compile (same Triton, kernel source, "
                        "specialisation, options, target) from cache_dir"),
        cache_dir=Opt(str(Path.home() / ".cache" / "gpt-triton" / "compile-report"),
                      "where compile results are cached"),
    ),
    "output": dict(
        out=Opt("", "results JSON; default bench/results/compile-<triton>-<date>[-ci].json"),
        markdown=Opt(True, "also write the summary as <stem>.md next to the JSON"),
        update_readme=Opt(False, "rewrite the block between the compile markers in --readme"),
        readme=Opt(str(REPO_ROOT / "docs" / "results.md"), "the page whose block is rewritten"),
        readme_only=Opt(False, "only rebuild the README block from the newest full report of "
                               "each Triton version in bench/results (no compiling)"),
        check=Opt(True, "exit with status 1 if any offered config fails, spills or exceeds "
                        "shared memory"),
    ),
}
DESCRIPTION = package.__doc__.split("\n\n")[0]


def _check_environment():
    """The report must see what a GPU run offers: not the interpreter's single config."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise UsageError("TRITON_INTERPRET=1 is set: the kernels would offer the interpreter's "
                         "single config, not what a GPU run offers; unset it")
    attention = sys.modules.get("gpt_kernels.attention")
    if attention is not None and getattr(attention, "_INTERPRET", False):
        raise UsageError("kernels were imported under TRITON_INTERPRET=1 in this process; "
                         "run the report in a fresh process without it")


def run(cfg):
    """One report as the options ``cfg`` say; returns its document (None for readme_only)."""
    if cfg["readme_only"]:
        docs = newest_reports()
        print(f"updated {update_readme(cfg['readme'], docs)} from "
              + (", ".join(d["file"] for d in docs) or "no report"))
        return None
    ops, dtypes = list(cfg["ops"]), list(cfg["dtypes"])  # checked by parse()
    targets = [TARGETS[t] for t in cfg["targets"]]
    inject = parse_inject(cfg["inject"])
    if cfg["update_readme"] and cfg["subset"] != "full":
        raise UsageError("--update_readme=True needs --subset=full: the README shows full reports")
    if cfg["update_readme"] and not Path(cfg["readme"]).is_file():
        raise UsageError(f"--readme: {cfg['readme']} does not exist")
    _check_environment()

    t0 = time.perf_counter()
    cases = build_cases(cfg["subset"], ops)
    pick = cfg["configs"] if cfg["configs"] != "auto" else \
        ("all" if cfg["subset"] == "full" else "largest")
    jobs, offered = collect_jobs(cases, dtypes, targets, inject, pick)
    if inject and not any(j["injected"] for j in jobs.values()):
        autotuned = sorted({j["kernel"] for j in jobs.values() if j["smem_estimate"] is not None})
        raise UsageError(f"--inject: no autotuned kernel {inject[0]!r} is launched in this "
                         f"report; autotuned kernels: {', '.join(autotuned)}")
    kernels_seen = {j["kernel"] for j in jobs.values()}
    # the full report must launch every kernel; the ci subset launches what GPT-2 small's
    # training does (no dropout: not the dropout-mask kernel, which only tests use)
    missing = [] if cfg["subset"] != "full" else sorted(
        {f"{m.__name__}.{n}" for m in kernel_modules() for n in launched_kernels(m)
         if n not in kernels_seen and m.__name__.removeprefix("gpt_kernels.") in ops})
    results = compile_jobs(jobs, cfg["workers"], cfg["cache"], cfg["cache_dir"])
    records = make_records(jobs, results)
    commit, dirty = git_commit()
    doc = dict(
        schema=SCHEMA, subset=cfg["subset"], configs=pick, date=date.today().isoformat(),
        versions=versions(), commit=commit, dirty=dirty, host=host_description(),
        targets=[t.name for t in targets], dtypes=dtypes, ops=ops,
        target_info={t.name: {"capability": t.capability, "smem_limit": t.smem, "sms": t.sms,
                              "chip": t.chip} for t in targets},
        inject=cfg["inject"] or None, cases=[c.label for c in cases],
        kernels_not_launched=missing, workers=cfg["workers"],
        offered=distinct(offered),
        wall_s=None, totals=totals(records), summary=summarise(records), records=records,
    )
    version = doc["versions"]["triton"]
    if pick != "all":  # what was not compiled here must have been, cleanly, in a full report
        full = full_report_for(version)
        doc["full_report"] = full["file"] if full else None
        doc["not_in_full_report"] = unreported(offered, full) if full else None
    doc["wall_s"] = round(time.perf_counter() - t0, 1)
    suffix = "" if cfg["subset"] == "full" else f"-{cfg['subset']}"
    out = Path(cfg["out"] or RESULTS_DIR / f"compile-{version}-{doc['date']}{suffix}.json")
    write_text(out, json.dumps(doc, indent=1) + "\n")
    print(summary_md(doc))
    print(f"wrote {out}")
    if cfg["markdown"]:
        md = out.with_suffix(".md")
        write_text(md, report_md(doc))
        print(f"wrote {md}")
    if cfg["update_readme"]:
        docs = newest_reports(out.parent)
        print(f"updated {update_readme(cfg['readme'], docs)}")
    return _verdict(doc, cfg["check"])


def _verdict(doc, check):
    """Print the problems; exit with status 1 when there are any and ``check`` is on."""
    for rec in doc["records"]:
        for p in rec["problems"]:
            print(f"PROBLEM {rec['target']} {rec['kernel']} {config_text(rec['config'])}: {p}")
    if doc["kernels_not_launched"]:
        print(f"PROBLEM kernels no case launches: {', '.join(doc['kernels_not_launched'])}")
    for o in doc.get("not_in_full_report") or []:
        print(f"PROBLEM {o['target']} {o['kernel']} {o['dtype']} {config_text(o['config'])}: "
              f"offered by its autotuner but not compiled cleanly in {doc['full_report']} "
              f"(run {PROG})")
    if doc.get("full_report", "") is None:
        print(f"note: no full report for Triton {doc['versions']['triton']} in bench/results; "
              f"only the largest config of each launch was compiled")
    n = (doc["totals"]["with_problems"] + len(doc["kernels_not_launched"])
         + len(doc.get("not_in_full_report") or []))
    if check and n:
        print(f"compile check failed: {n} problems")
        raise SystemExit(1)
    return doc


def main(argv=None):
    cfg = parse(argv, OPTIONS, prog=PROG, description=DESCRIPTION)
    return run(cfg)
