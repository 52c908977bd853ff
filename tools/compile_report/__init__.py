"""What is known without a GPU: every Triton kernel compiled for real NVIDIA chips, no GPU needed.

    python -m tools.compile_report                       # sm_80 and sm_90, every dtype
    python -m tools.compile_report --targets=all         # also sm_86, sm_89 (99 KB of smem)
    python -m tools.compile_report --subset=ci           # GPT-2 small (make test)
    python -m tools.compile_report --update_readme=True  # and rewrite README's block
    python -m tools.compile_report --readme_only=True    # the block from the JSONs there

For each kernel in ``gpt_kernels/`` x dtype (bf16, fp16, fp32 with IEEE dots, fp32 with TF32) x
target (sm_80 = A100, sm_90 = H100; sm_86 / sm_89 on request) x every config the kernel's
autotuner offers at that shape, Triton's compiler produces the PTX and cubin the chip would
run, and the report records: compiled or not, registers per thread, spill bytes, shared
memory against the chip's limit, tensor-core instructions in the SASS (``HMMA``; ``HGMMA`` is
Hopper's wgmma) and compile seconds.

Launches come from the project's own launchers (``attention_forward``, ``layer_norm_backward``,
...) run on fake CUDA tensors (``FakeTensorMode``: shapes, dtypes, strides and storage
offsets, no memory) inside ``gpt_kernels._library.recording()``, where each
``launch(kernel)[grid](...)`` records its arguments instead of running. The device the
launchers and the autotuners' pruning see is a stand-in for the target (its SM count and
shared-memory limit), so the configs compiled are exactly those the autotuner would offer
on that chip at that shape, specialised as a real launch specialises them (constexprs,
argument dtypes, divisibility by 16 of pointers and integers).

``--subset=ci`` takes GPT-2 small's shapes and compiles, per launch, the offered config most
likely to spill (the largest tile per warp); every other offered config must then appear,
compiled cleanly, in the committed full report of the same Triton version.

Writes ``bench/results/compile-<triton>-<date>.json`` (``-ci`` appended for the subset), a
markdown summary next to it, and with ``--update_readme=True`` the block between
``<!-- compile:start -->`` and ``<!-- compile:end -->`` in docs/results.md. Exits with status 1
when any compiled config fails, spills, or asks for more shared memory than the target has
(``--check=False`` only reports).

The modules, one job each, in the order a run uses them:

    cases.py           which kernel files are launched, at which shapes (the model presets)
    chips.py           the target chips, and a stand-in GPU for them on a CPU-only torch
    launches.py        launches recorded on the stand-in, expanded into the configs offered
    triton_compile.py  one launch compiled for one target; registers, spills, SASS read back
    pool.py            every distinct compile once, in worker processes, cached on disk
    report.py          checks, summaries, markdown, the docs/results.md block
    cli.py             the options and the run (``__main__.py`` calls it)
    compat.py          the compile check under other Triton releases and environments
                       (``python -m tools.compile_report.compat``, ``make compat``)

A package of ``tools/``, not of ``bench/``: it compiles and measures nothing at run time, and
one job per module keeps each short enough to read at once.
"""
