"""gpt.sample_table: one prompt under several decoding settings, as a markdown table."""

import subprocess
import sys

import pytest

from gpt import sample, sample_table
from gpt.cli import UsageError
from tests.test_sample import trained  # noqa: F401  (fixtures)
from tests.test_train import corpus  # noqa: F401


def test_table_rows_match_gpt_sample_for_each_setting(trained, tmp_path):  # noqa: F811
    out = tmp_path / "table.md"
    settings = "greedy=True; temperature=1.0,top_k=10; temperature=0.8,top_k=0,top_p=0.9"
    sample_table.main([f"--out_dir={trained}", "--start=ROMEO:", "--max_new_tokens=30",
                       f"--settings={settings}", f"--output={out}"])
    lines = out.read_text().splitlines()
    assert lines[:2] == ["| setting | output |", "| --- | --- |"] and len(lines) == 5
    for line, (label, values) in zip(lines[2:], sample_table.parse_settings(settings)):
        # the same text gpt.sample prints for these options, seed and length
        (text,) = sample.sample({**sample.DEFAULTS, **values, "out_dir": str(trained),
                                 "device": "cpu", "start": "ROMEO:", "max_new_tokens": 30,
                                 "num_samples": 1, "seed": 1337})
        assert line == f"| {label} | {sample_table.cell(text)} |"
    assert lines[2].startswith("| `--greedy=True` | ROMEO:")


def test_cell_keeps_a_table_row_on_one_line():
    assert sample_table.cell("a|b\nc") == "a\\|b<br>c"


@pytest.mark.parametrize("settings, match", [
    ("temprature=0.8", "temprature"),
    ("top_k=-1", "top_k"),
    (" ; ", "no setting"),
])
def test_bad_settings(settings, match):
    with pytest.raises(UsageError, match=match):
        sample_table.parse_settings(settings)


def test_cli_error_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "gpt.sample_table", f"--out_dir={tmp_path}"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "no ckpt.pt" in proc.stderr
