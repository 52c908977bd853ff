"""What the compiles mean: checks, summaries, the markdown report and the docs/results.md block.

A record is one compile job with its result (``pool.compile_jobs``) and its problems; the
JSON document ``cli.run`` writes holds them all with their summary per kernel x dtype x
target. Full reports in ``bench/results`` are what the README block is built from and what
the CI subset checks its offered configs against.
"""

import json
import re
import statistics
from collections import defaultdict
from pathlib import Path

from bench.common import replace_block
from gpt.files import write_text
from tools.compile_report.chips import TARGETS
from tools.compile_report.launches import config_text

__all__ = ["RESULTS_DIR", "SCHEMA", "START", "END", "problems_of", "make_records", "summarise",
           "totals", "summary_md", "report_md", "readme_block", "update_readme",
           "newest_reports", "full_report_for"]

REPO_ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = REPO_ROOT / "bench" / "results"
START, END = "<!-- compile:start -->", "<!-- compile:end -->"
SCHEMA = "compile-report/1"


def problems_of(rec):
    """What stops this config from running well on its target (empty when nothing does)."""
    if not rec["ok"]:
        return ["compile error: " + rec["error"]]
    out = []
    if rec["spill_stores"] or rec["spill_loads"]:
        out.append(f"spills {rec['spill_stores']} B stored / {rec['spill_loads']} B loaded "
                   f"per thread ({rec['registers']} registers)")
    if rec["shared"] > rec["smem_limit"]:
        out.append(f"shared memory {rec['shared']} B > {rec['smem_limit']} B on {rec['target']}")
    if rec["smem_estimate"] is not None and rec["shared"] > rec["smem_estimate"]:
        out.append(f"the autotuner's shared-memory estimate {rec['smem_estimate']} B is below "
                   f"the {rec['shared']} B compiled: its pruning could let a config through "
                   f"that does not fit")
    return out


def make_records(jobs, results):
    """One record per job: where it is used, its config and its compile result, with its
    problems; sorted by file, kernel, target, dtypes and config."""
    records = []
    for key, job in jobs.items():
        rec = {k: v for k, v in job.items() if k not in ("args", "kwargs", "key", "module")}
        rec.update(results[key])
        rec["problems"] = problems_of(rec)
        records.append(rec)
    order = {name: i for i, name in enumerate(TARGETS)}
    records.sort(key=lambda r: (r["file"], r["kernel"], order[r["target"]],
                                sorted({u["dtype"] for u in r["uses"]}), str(r["config"])))
    return records


def summarise(records):
    """Per (kernel, dtype, target): configs compiled, failures, worst registers / spills /
    shared memory, tensor-core instructions, compile seconds."""
    groups = defaultdict(list)
    for rec in records:
        for dtype in sorted({u["dtype"] for u in rec["uses"]}):
            groups[(rec["file"], rec["kernel"], dtype, rec["target"])].append(rec)
    rows = []
    for (file, kernel, dtype, target), recs in groups.items():
        ok = [r for r in recs if r["ok"]]
        tc = defaultdict(int)
        for r in ok:
            for op, n in r["tensor_core"].items():
                tc[op] = max(tc[op], n)
        rows.append(dict(
            file=file, kernel=kernel, dtype=dtype, target=target, compiles=len(recs),
            failed=len(recs) - len(ok),
            spilling=sum(1 for r in ok if r["spill_stores"] or r["spill_loads"]),
            over_smem=sum(1 for r in ok if r["shared"] > r["smem_limit"]),
            max_registers=max((r["registers"] for r in ok), default=None),
            max_spill=max((r["spill_stores"] for r in ok), default=None),
            max_shared=max((r["shared"] for r in ok), default=None),
            smem_limit=recs[0]["smem_limit"],
            tensor_core=dict(tc),
            compile_s_median=statistics.median(r["compile_s"] for r in recs),
            compile_s_total=round(sum(r["compile_s"] for r in recs), 2),
        ))
    return rows


def totals(records):
    """The counts of the whole report (the summary's first line, the exit status)."""
    return dict(
        compiles=len(records),
        failed=sum(not r["ok"] for r in records),
        spilling=sum(1 for r in records if r["ok"] and (r["spill_stores"] or r["spill_loads"])),
        over_smem=sum(1 for r in records if r["ok"] and r["shared"] > r["smem_limit"]),
        with_problems=sum(bool(r["problems"]) for r in records),
        compile_s=round(sum(r["compile_s"] for r in records), 1),
    )


# ----------------------------------------------------------------------------- markdown

def _kb(n):
    return "-" if n is None else f"{n / 1024:.0f}"


def _tc_text(tc):
    return ", ".join(f"{op} {n}" for op, n in sorted(tc.items())) or "none"


def summary_md(doc):
    t = doc["totals"]
    lines = [
        f"Triton {doc['versions']['triton']}, targets {', '.join(doc['targets'])}, dtypes "
        f"{', '.join(doc['dtypes'])} ({doc['subset']} subset, {doc['configs']} configs of "
        f"{len(doc['offered'])} offered): **{t['compiles']} distinct compiles, {t['failed']} "
        f"failed, {t['spilling']} spill, {t['over_smem']} over shared memory**; "
        f"{t['compile_s']:.0f} s of compiling, {doc['wall_s']:.0f} s wall on "
        f"{doc['workers']} process(es) ({doc['host']}).",
        "",
        "| kernel | dtype | target | configs | failed | max regs | spills | max smem KB (limit) "
        "| tensor-core instrs (max) | compile s (median) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for row in doc["summary"]:
        lines.append(
            f"| `{row['kernel']}` | {row['dtype']} | {row['target']} | {row['compiles']} | "
            f"{row['failed']} | {row['max_registers']} | {row['spilling']} | "
            f"{_kb(row['max_shared'])} ({_kb(row['smem_limit'])}) | "
            f"{_tc_text(row['tensor_core'])} | {row['compile_s_median']:.1f} |")
    return "\n".join(lines)


def detail_md(doc):
    lines = ["| kernel | target | dtypes | config | specialisation | regs | spill B | smem KB "
             "| est. KB | tensor cores | s |",
             "| --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | --- | ---: |"]
    for r in doc["records"]:
        dtypes = ", ".join(sorted({u["dtype"] for u in r["uses"]}))
        spec = " ".join(f"{k}={v}" for k, v in r["specialisation"].items())
        head = (f"| `{r['kernel']}` | {r['target']} | {dtypes} | {config_text(r['config'])} "
                f"| {spec}")
        if not r["ok"]:
            lines.append(f"{head} | FAILED | | | | {r['error'][:120]} | {r['compile_s']:.1f} |")
            continue
        lines.append(
            f"{head} | {r['registers']} | {r['spill_stores']} | {r['shared'] / 1024:.1f} | "
            f"{_kb(r['smem_estimate'])} | {_tc_text(r['tensor_core'])} | {r['compile_s']:.1f} |")
    return "\n".join(lines)


def report_md(doc):
    problems = [f"- `{r['kernel']}` {r['target']} {config_text(r['config'])}: {p}"
                for r in doc["records"] for p in r["problems"]]
    return "\n".join([
        f"# Compile report: Triton {doc['versions']['triton']}, {doc['date']}",
        "", summary_md(doc), "",
        "## Problems", "", "\n".join(problems) if problems else "None.", "",
        "## Shapes", "", "\n".join(f"- {c}" for c in doc["cases"]), "",
        "## Every compile", "", detail_md(doc), "",
    ])


def _kernel_rows(doc, targets):
    """README rows: per kernel, over dtypes, the worst figures per target."""
    per = defaultdict(lambda: defaultdict(list))
    for row in doc["summary"]:
        per[(row["file"], row["kernel"])][row["target"]].append(row)
    lines = []
    for (file, kernel), by_target in per.items():
        cells = []
        for t in targets:
            rows = by_target.get(t, [])
            if not rows:
                cells += ["-"] * 4
                continue
            tc = defaultdict(int)
            for r in rows:
                for op, n in r["tensor_core"].items():
                    tc[op] = max(tc[op], n)
            cells += [str(sum(r["compiles"] for r in rows)),
                      str(max(r["max_registers"] or 0 for r in rows)),
                      f"{max(r['max_shared'] or 0 for r in rows) / 1024:.0f} / "
                      f"{rows[0]['smem_limit'] / 1024:.0f}",
                      "/".join(sorted(tc)) or "-"]
        lines.append(f"| `{kernel}` ({file}) | " + " | ".join(cells) + " |")
    return lines


def readme_block(docs):
    """The README's compile block from full reports (newest Triton first)."""
    if not docs:
        return ("No compile report yet: run `python -m tools.compile_report "
                "--update_readme=True`.")
    newest = docs[0]
    targets = [t for t in ("sm_80", "sm_90") if t in newest["targets"]] or newest["targets"]
    head = ["| kernel | " + " | ".join(f"{t} configs | {t} max regs | {t} max smem KB / limit "
                                       f"| {t} tensor cores" for t in targets) + " |",
            "| --- | " + " | ".join("---: | ---: | ---: | ---" for _ in targets) + " |"]
    lines = [
        f"Generated by `python -m tools.compile_report` from "
        f"`bench/results/{newest['file']}` ({newest['date']}, commit "
        f"{(newest.get('commit') or 'unknown')[:10]}).",
        "",
    ]
    for doc in docs:
        t = doc["totals"]
        lines.append(
            f"- Triton {doc['versions']['triton']}: {t['compiles']} distinct compiles "
            f"({', '.join(doc['targets'])}; {', '.join(doc['dtypes'])}), **{t['failed']} "
            f"failed, {t['spilling']} spill, {t['over_smem']} over shared memory**; "
            f"{doc['wall_s'] / 60:.0f} min on {doc['workers']} process(es).")
    lines += ["", f"Per kernel with Triton {newest['versions']['triton']}, worst case over "
              f"dtypes, shapes and the configs each autotuner offers:", ""]
    lines += head + _kernel_rows(newest, targets)
    return "\n".join(lines)


def update_readme(readme, docs):
    readme = Path(readme)
    write_text(readme, replace_block(readme.read_text(), readme_block(docs), START, END))
    return readme


def newest_reports(results_dir=RESULTS_DIR):
    """The newest full report of each Triton version, newest Triton first."""
    best = {}
    for path in sorted(Path(results_dir).glob("compile-*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if doc.get("schema") != SCHEMA or doc.get("subset") != "full":
            continue
        doc["file"] = path.name
        version = doc["versions"]["triton"]
        if version not in best or doc["date"] >= best[version]["date"]:
            best[version] = doc
    key = lambda v: tuple(int(x) for x in re.findall(r"\d+", v)[:3])  # noqa: E731
    return [best[v] for v in sorted(best, key=key, reverse=True)]


def full_report_for(version, results_dir=RESULTS_DIR):
    """The newest full report made with Triton ``version``, or None."""
    return next((d for d in newest_reports(results_dir) if d["versions"]["triton"] == version),
                None)

