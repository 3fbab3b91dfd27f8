"""``python -m aetune.tools.bench --compare``: both compositions timed in one run, ratios and peak memory printed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from aetune.tools import bench
from tests.train_helpers import tiny_preset


@pytest.fixture(autouse=True)
def keep_thread_count():
    """``--threads`` sets torch's process-wide count: put it back, later tests' CPU numerics depend on it."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def rows(text: str) -> dict[str, str]:
    return {line.split("  ")[1].strip(): line for line in text.splitlines() if "images/s" in line}


@pytest.mark.parametrize("stage", ["1", "2"])
def test_compare_times_reference_and_ours_and_prints_ratios(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], stage: str
) -> None:
    args = ["--config", str(tiny_preset(tmp_path)), "--batch_size", "2", "--steps", "3", "--warmup", "1"]
    args += ["--device", "cpu", "--threads", "1", "--compare", "--stage", stage]
    assert bench.main(bench.parse_args(args)) == 0
    out = capsys.readouterr().out
    assert f"vavae stage {stage}, batch 2, 32-true, CPU, 3 steps after 1 warm-up, 1 threads" in out
    ref, ours, ratios = out.split("reference:\n")[1].split("ours:\n")[0], *out.split("ours:\n")[1].split("ours vs")
    phases = {"generator", "whole step"} | ({"discriminator"} if stage == "2" else set())
    for part in (ref, ours):
        assert set(rows(part)) == phases
        for line in rows(part).values():  # median ms (min..max): min <= median <= max
            med, (lo, hi) = float(line.split(" ms (")[0].split()[-1]), line.split(" ms (")[1].split(")")[0].split("..")
            assert 0 < float(lo) <= med <= float(hi)
    ratio_lines = [line for line in ratios.splitlines() if "x images/s" in line]
    assert {line.split()[0] + (" step" if "whole" in line else "") for line in ratio_lines} == phases
    assert all(float(line.split("x images/s")[0].split()[-1]) > 0 and "peak memory" in line for line in ratio_lines)


def test_row_reports_the_median_step() -> None:
    line = bench.row("generator", 4, [2.0, 1.0, 9.0], 512.0, "peak RSS")
    assert "2.000 images/s" in line and "2000.0 ms (1000.0..9000.0)" in line and "512 MiB peak RSS" in line
