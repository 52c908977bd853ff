"""Autotune keys: a new batch size or sequence length within a bucket must not re-benchmark."""

import importlib

import pytest

from gpt_kernels import _autotune

attention = importlib.import_module("gpt_kernels.attention")


@pytest.mark.parametrize("n, want", [(0, 1), (1, 1), (2, 2), (3, 4), (1000, 1024),
                                     (1024, 1024), (1025, 2048), (8192, 8192), (8193, 16384)])
def test_bucket_is_the_next_power_of_two(n, want):
    assert _autotune.bucket(n) == want


@pytest.mark.parametrize("kernel", ["_attn_fwd", "_attn_bwd_dkdv", "_attn_bwd_dq"])
def test_attention_keys_bucket_the_sizes(kernel):
    # batch and heads are not in the key, the sequence lengths only through their buckets:
    # B=8 then B=6, or T=1000 then T=1024, reuse the tile already chosen
    keys = set(getattr(attention, kernel).keys)
    assert {"Q_BUCKET", "K_BUCKET"} <= keys
    assert not keys & {"H", "N_CTX_Q", "N_CTX_K", "B", "Z"}
    assert attention._bucket(1000) == attention._bucket(1024) == 1024
