"""The GPU check (``benchmarks/gpu_check.sh``) on CPU: the no-GPU exit, the script's syntax and its commands'
flags, and the pure parts of ``benchmarks/gpu_check_helpers.py`` (verdicts, checkpoint reading, the report).
The check itself needs a CUDA GPU and is not run here."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check_helpers as gc

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
NO_GPU_LINE = "error: no CUDA GPU: the GPU check needs one (see docs/performance.md)"


def script_text() -> str:
    return SCRIPT.read_text()


def test_without_cuda_exits_2_with_one_line_and_writes_nothing(tmp_path: Path) -> None:
    cwd, tmp = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    tmp.mkdir()
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TMPDIR": str(tmp), "PYTHON": sys.executable}
    env.pop("OUT", None)
    out = subprocess.run(["bash", str(SCRIPT)], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    assert (out.stdout + out.stderr).splitlines() == [NO_GPU_LINE]
    assert list(cwd.iterdir()) == [] and list(tmp.iterdir()) == []  # not even the report folder


def test_script_syntax() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True, timeout=30)


def test_script_calls_existing_helper_subcommands() -> None:
    called = set(re.findall(r"^\s*helper (\w+)", script_text(), re.M))
    called |= set(re.findall(r"-m benchmarks\.gpu_check_helpers (\w+)", script_text()))
    assert {"train", "resume", "sdpa", "syncs", "bench", "probe", "report"} <= called <= {*gc.COMMANDS, "report"}


def test_script_covers_every_demo_preset() -> None:
    presets = {p.stem for p in (REPO / "configs").glob("*demo.yaml")}
    table = re.search(r"declare -A DEMO_DATA=\((.*?)\)", script_text(), re.S)
    assert table is not None
    assert set(re.findall(r"\[(\w+)\]=", table[1])) == presets


def test_script_flags_exist_in_the_project_commands() -> None:
    import step4_train
    from aetune.tools import bench, memory_probe

    args = step4_train.parse_args(
        shlex.split(
            "--config vavae --from_scratch --no_progress --batch_size 8 --set teacher.pretrained=false "
            "--stages 2 --allow_stage_gap --max_steps 6 --precision bf16-mixed --stop_after_batches 3"
        )
    )
    assert args.stop_after_batches == 3 and args.allow_stage_gap
    b = bench.parse_args(shlex.split("--config vavae --batch_size 8 --steps 8 --warmup 3 --device cuda --precision 32"))
    assert b.precision == "32"
    probe = memory_probe.parse_args(
        shlex.split(
            "--family kl3d --resolution 256,256,64 --batch_size 1 --channels 16,32,64 --amp on "
            "--checkpointing on,off --timeout 95 --json x.json"
        )
    )
    specs = memory_probe.grid(probe)
    assert [(s["amp"], s["checkpointing"], s["sizes"]) for s in specs] == [
        (True, True, [256, 256, 64]),
        (True, False, [256, 256, 64]),
    ]


# ---------------------------------------------------------------- checkpoints and training verdicts


@pytest.fixture
def tiny_checkpoint(tmp_path: Path) -> Path:
    """A last.ckpt as step 4 writes it under 16-mixed, reduced to what the check reads."""
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ckpt = {
        "global_step": 20,
        "state_dict": {"autoencoder.w": torch.ones(2, 3), "ema.n_averaged": torch.tensor(3)},
        "WindowMixedPrecision": scaler.state_dict(),
        "aetune": {
            "batches_seen": 24,
            "total_batches": 24,
            "nonfinite_total": 5,
            "overflow_total": 3,
            "family": "vavae",
        },
    }
    path = tmp_path / "last.ckpt"
    torch.save(ckpt, path)
    return path


def test_checkpoint_facts_read_counters_and_scale(tiny_checkpoint: Path) -> None:
    facts = gc.checkpoint_facts(gc.load_checkpoint(tiny_checkpoint))
    assert facts == {
        "batches_seen": 24,
        "total_batches": 24,
        "nonfinite_total": 5,
        "overflow_total": 3,
        "global_step": 20,
        "fp16_scale": 1024.0,
    }
    assert gc.fp16_scale({"MixedPrecision": {}, "aetune": {}}) is None  # bf16 / a dropped optimizer state


FP16 = {"batches_seen": 24, "total_batches": 24, "nonfinite_total": 5, "global_step": 38, "fp16_scale": 2048.0}


@pytest.mark.parametrize(
    ("rc", "facts", "precision", "log", "finite", "fragment"),
    [
        (0, FP16, "16-mixed", "", False, None),
        (1, FP16, "16-mixed", "error: something", False, "exit code 1"),
        (124, FP16, "16-mixed", "", False, "timeout"),
        (0, None, "16-mixed", "", False, "no last.ckpt"),
        (0, {**FP16, "batches_seen": 12}, "16-mixed", "", False, "expected 24"),
        (0, {**FP16, "fp16_scale": None}, "16-mixed", "", False, "loss scale None"),
        (0, {**FP16, "fp16_scale": float("nan")}, "16-mixed", "", False, "loss scale nan"),
        (0, {**FP16, "nonfinite_total": 24}, "16-mixed", "", False, "every batch skipped"),
        (0, {**FP16, "nonfinite_total": 4, "overflow_total": 20}, "16-mixed", "", False, "overflows included"),
        (0, FP16, "16-mixed", "AssertionError: No inf checks were recorded", False, "No inf checks"),
        (0, {**FP16, "fp16_scale": None, "nonfinite_total": 0}, "bf16-mixed", "", True, None),
        (0, {**FP16, "fp16_scale": None}, "bf16-mixed", "", True, "5 batches skipped"),
    ],
)
def test_judge_training(
    rc: int, facts: dict | None, precision: str, log: str, finite: bool, fragment: str | None
) -> None:
    ok, notes = gc.judge_training(rc, facts, 24, precision, log, finite)
    assert ok == (fragment is None), notes
    if fragment is not None:
        assert any(fragment in n for n in notes), notes


def test_log_problem_names_the_failing_line() -> None:
    log = "INFO start\nTraceback (most recent call last):\n  File x\nRuntimeError: CUDA out of memory\n"
    assert gc.log_problem(log) == "RuntimeError: CUDA out of memory"
    assert gc.log_problem("a\nerror: --precision bf16-mixed needs a CUDA GPU\n").startswith("error: --precision")
    assert gc.log_problem("stage 1 diverged at batch 3") == "stage 1 diverged at batch 3"
    assert gc.log_problem("all good\n") is None


# ---------------------------------------------------------------- stop and resume


def test_weight_difference_and_resume_verdict() -> None:
    g = torch.Generator().manual_seed(0)
    stopped = {"a": torch.randn(4, 4, generator=g), "b": torch.randn(3, generator=g)}
    ref = {k: v + 0.01 for k, v in stopped.items()}  # training after the stop moved every weight by 0.01
    same = gc.weight_difference(ref, {k: v.clone() for k, v in ref.items()}, stopped)
    assert same["max_abs"] == 0 and same["rel_norm"] == 0 and same["missing"] == []
    assert gc.judge_resume(same, (6, 6)) == (True, [])
    noisy = gc.weight_difference(ref, {k: v + 1e-5 for k, v in ref.items()}, stopped)
    assert noisy["max_abs"] == pytest.approx(1e-5, rel=1e-2) and noisy["rel_norm"] == pytest.approx(1e-3, rel=1e-2)
    assert gc.judge_resume(noisy, (6, 6))[0]
    lost = gc.weight_difference(ref, stopped, stopped)  # a resume that did not train on: off by all of it
    ok, notes = gc.judge_resume(lost, (6, 6))
    assert not ok and any(">= 0.001" in n for n in notes) and any(">= 0.25" in n for n in notes)
    ok, notes = gc.judge_resume(gc.weight_difference(ref, {"a": ref["a"]}, None), (6, 3))
    assert not ok and any("batches_seen differ" in n for n in notes) and any("one checkpoint only" in n for n in notes)


def test_trainable_state_keeps_floating_tensors(tiny_checkpoint: Path) -> None:
    assert list(gc.trainable_state(gc.load_checkpoint(tiny_checkpoint))) == ["autoencoder.w"]


# ---------------------------------------------------------------- attention, syncs, bench, probe


def test_judge_sdpa() -> None:
    ok_rows = {"shape": "(8, 512, 16, 16)", "contiguous/fused": "ok", "channels_last/fused": "ok", "x/flash": "no"}
    assert gc.judge_sdpa(ok_rows) == (True, [])
    ok, notes = gc.judge_sdpa({**ok_rows, "contiguous/fused": "No available kernel. Aborting execution."})
    assert not ok and notes == ["contiguous/fused: No available kernel. Aborting execution."]


def test_sync_counter_counts_sync_warnings_by_site() -> None:
    counter = gc.SyncCounter()
    counter.per_batch.append(0)
    counter._hook("called a synchronizing CUDA operation", UserWarning, "x.py", 1)
    counter._hook("some other warning", UserWarning, "x.py", 2)
    assert counter.per_batch == [1] and sum(counter.sites.values()) == 1


def test_sync_site_prefers_the_project_frame() -> None:
    frames = [
        traceback.FrameSummary(str(gc.REPO / "aetune" / "train" / "module.py"), 207, "step"),
        traceback.FrameSummary("/env/torch/amp/grad_scaler.py", 88, "update"),
        traceback.FrameSummary("/usr/lib/python3/warnings.py", 1, "warn"),
    ]
    assert gc.sync_site(frames) == "aetune/train/module.py:207 via amp/grad_scaler.py:88"
    assert gc.sync_site(frames[1:]) == "amp/grad_scaler.py:88"


def test_syncs_takes_step4_arguments_after_a_double_dash() -> None:
    args = gc.parse_args(["syncs", "--out", "o", "--block", "5_syncs", "--", "--config", "vavae", "--stages", "2"])
    assert args.step4_args[-4:] == ["--config", "vavae", "--stages", "2"]


def test_parse_bench_reads_the_bench_rows() -> None:
    from aetune.tools.bench import row

    text = "\n".join(
        [
            "vavae stage 2, batch 8, bf16-mixed, NVIDIA H200, 8 steps after 3 warm-up, 16 threads",
            row("generator", 8, [0.10, 0.12, 0.11], 20480.0, "max allocated"),
            row("discriminator", 8, [0.02, 0.02, 0.03], 21000.0, "max allocated"),
            row("whole step", 8, [0.12, 0.14, 0.13], 21000.0, "max allocated"),
        ]
    )
    rows = gc.parse_bench(text)
    assert set(rows) == {"generator", "discriminator", "whole step"}
    assert rows["whole step"]["images_per_s"] == pytest.approx(8 / 0.13, rel=1e-3)
    assert rows["whole step"]["peak_mib"] == 21000 and rows["generator"]["median_ms"] == pytest.approx(110.0)


def test_judge_probe() -> None:
    fit = {"checkpointing": True, "status": "ok", "max_allocated": 9e9, "step_s": 1.5, "max_batch": 12}
    oom = {"checkpointing": False, "status": "oom", "detail": "CUDA out of memory"}
    ok, numbers, notes = gc.judge_probe([fit, oom])
    assert ok and numbers["checkpointing_on"]["max_batch"] == 12 and notes == []
    ok, _, notes = gc.judge_probe([{**fit, "status": "failed (exit 1)", "detail": "ImportError: monai"}])
    assert not ok and any("ImportError" in n for n in notes)
    assert not gc.judge_probe([])[0]


# ---------------------------------------------------------------- blocks and the report


def test_report_aggregates_blocks_and_fails_on_missing_ones(tmp_path: Path) -> None:
    gc.write_block(tmp_path, gc.BlockResult("4_sdpa", "fused SDPA", gc.PASS, 3.2, {"contiguous/fused": "ok"}))
    gc.write_block(tmp_path, gc.BlockResult("2_resume", "resume", gc.FAIL, 50.0, {"max_abs": 0.5}, ["too far"]))
    rc = gc.main(gc.parse_args(["report", "--out", str(tmp_path), "--expect", "2_resume", "4_sdpa", "7_kl3d_probe"]))
    assert rc == 1
    text = (tmp_path / "report.txt").read_text()
    assert "FAIL  2_resume  (50.0 s)  resume" in text and "note: too far" in text and "max_abs=0.5" in text
    assert "PASS  4_sdpa  (3.2 s)" in text and "FAIL  7_kl3d_probe" in text
    assert text.rstrip().endswith("RESULT: FAIL: 2_resume, 7_kl3d_probe")
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["passed"] is False and [b["name"] for b in data["blocks"]] == ["2_resume", "4_sdpa", "7_kl3d_probe"]


def test_report_passes_when_every_block_passed(tmp_path: Path) -> None:
    gc.main(gc.parse_args(["record", "--out", str(tmp_path), "--block", "0_data", "--title", "step 3"]))
    to = tmp_path / "out"
    assert gc.main(gc.parse_args(["report", "--out", str(tmp_path), "--to", str(to), "--expect", "0_data"])) == 0
    assert (to / "report.txt").read_text().rstrip().endswith("RESULT: PASS")
    assert json.loads((to / "report.json").read_text())["passed"] is True


def test_a_failing_check_still_writes_its_block(tmp_path: Path) -> None:
    bad = tmp_path / "last.ckpt"
    bad.write_text("<html>not a checkpoint</html>")
    argv = ["train", "--out", str(tmp_path), "--block", "1_x", "--ckpt", str(bad), "--expect_batches", "6"]
    assert gc.main(gc.parse_args([*argv, "--precision", "bf16-mixed"])) == 0
    (result,) = gc.read_blocks(tmp_path)
    assert result.status == gc.FAIL and result.notes[0].startswith("the check itself failed: CheckpointError")


def test_missing_modules_are_named() -> None:
    assert gc.missing_modules(("json", "no_such_module_aetune")) == ["no_such_module_aetune"]


def test_script_step3_commands_parse() -> None:
    import step3_prepare_dataset

    lines = re.findall(r"^\s*prepare (\w+) (.*?) &$", script_text(), re.M)
    assert {name for name, _ in lines} == {"vavae", "img64", "img32", "video", "volume", "pairs"}
    for _, args in lines:
        step3_prepare_dataset.parse_args([*shlex.split(args), "--output_dir", "x", "--no_progress"])
