"""bench/run_gpu_session.sh: its python recipe and its CPU dry run, so the GPU benchmark script
cannot rot between GPU runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "bench/run_gpu_session.sh"
in_a_venv = pytest.mark.skipif(sys.prefix == sys.base_prefix, reason="reproduces a venv made from a venv")


@in_a_venv
def test_system_site_packages_venv_of_a_venv_has_no_torch(tmp_path: Path) -> None:
    """The failure the old script hit: the GPU machine's python3 is a venv, and a
    --system-site-packages venv made from it sees the base interpreter's packages, not its torch."""
    venv = tmp_path / "naive"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], check=True)
    probe = subprocess.run([str(venv / "bin/python"), "-c", "import torch"], capture_output=True, text=True)
    assert probe.returncode != 0 and "No module named 'torch'" in probe.stderr


@in_a_venv
@pytest.mark.ros
def test_dry_run_uses_the_parent_venv_recipe_and_writes_results(tmp_path: Path) -> None:
    pytest.importorskip("rclpy")
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "VENV": str(tmp_path / "venv"), "PARENT_PYTHON": sys.executable,
           # node latency and engine preparation have their own end-to-end tests; the essentials here
           "SKIP_STEPS": "node latency|engine prepare|all models|cudnn"}
    run = subprocess.run(["bash", str(SCRIPT), "--dry-run"], cwd=REPO_ROOT, env=env, capture_output=True,
                         text=True, timeout=1500)
    log = (out / "session.log").read_text()
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"python: {tmp_path / 'venv'}/bin/python (torch + rclpy OK" in log, log[-3000:]
    assert "FALLING BACK" not in log
    assert "=== ESSENTIAL part" in log and "=== OPTIONAL part" in log and "=== done" in log
    assert "=== cuda tests: exit" in log  # ran (its CUDA tests skip here; the 75 s limit may cut it under load)
    report = json.loads((out / "results/gpu_pipeline_regseg.json").read_text())
    (pipeline_run,) = report["runs"]
    assert pipeline_run["size"] == [64, 128] and set(pipeline_run["modes"]) == {"naive", "engine"}
    assert "error" not in pipeline_run["modes"]["engine"]
    assert pipeline_run["agreement_judged"] is False  # golden weights are random: information only
    assert [b["batch_size"] for b in pipeline_run["modes"]["engine"]["batches"]] == [4]


def test_unknown_option_is_refused() -> None:
    run = subprocess.run(["bash", str(SCRIPT), "--gpu"], capture_output=True, text=True, timeout=30)
    assert run.returncode == 2 and "usage" in run.stderr
