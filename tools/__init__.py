"""Checks of the project that measure nothing at run time (``bench/`` holds what does).

``tools.compile_report``: every Triton kernel compiled for real NVIDIA chips without a GPU.
"""
