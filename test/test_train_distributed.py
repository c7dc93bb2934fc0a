"""``seg-perception train`` under torchrun: two CPU processes (gloo) against one, a dying rank, resume.

Every run is tiny (64x64 crops, a few iterations) so the launcher and the imports are most of the
time. The launcher listens on loopback only (``--standalone``) and gloo is pinned to ``lo``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import REPO_ROOT

from seg_perception.cityscapes import CLASS_NAMES
from seg_perception.evaluation.cityscapes_folder import write_pair
from seg_perception.evaluation.sample_drive import render_drive
from seg_perception.models import build_model, load_checkpoint
from seg_perception.models.checkpoint import read_checkpoint
from seg_perception.training import distributed
from seg_perception.training.data import Frames, collect_samples
from seg_perception.training.labels import cityscapes_mapping
from seg_perception.training.trainer import RankSamples, TrainConfig, train, validate

#: The installed console script, as the documented ``torchrun ... $(which seg-perception) train``.
SEG_PERCEPTION = shutil.which("seg-perception", path=os.path.dirname(sys.executable))
#: The command with a tiny test network and fault injection (see its docstring).
ENTRY = Path(__file__).resolve().parent / "train_entry.py"
#: Per-rank batch; the single process gets twice as much.
BATCH = 2
COMMON = dict(split="train", crop=(64, 64), optimizer="sgd", lr=0.01, warmup=1, num_workers=0, seed=7,
              device="cpu", progress=False)


def _drive(root: Path, frames: int = 4) -> Path:
    for i, (rgb, ids) in enumerate(render_drive(frames, 64, 128, seed=21)):
        write_pair(root, "train", "x", f"x_000000_{i:06d}", rgb, ids)
    return root


@pytest.fixture(scope="module")
def drive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _drive(tmp_path_factory.mktemp("ddp_drive"))


def _args(config: dict[str, Any]) -> list[str]:
    """``train`` command-line arguments for a TrainConfig-like dict."""
    args = ["train"]
    for key, value in config.items():
        flag = "--" + key.replace("_", "-")
        if key == "progress":
            args += [] if value else ["--no-progress"]
        elif isinstance(value, bool):
            args += [flag] if value else []
        elif key == "crop":
            args += [flag, f"{value[0]}x{value[1]}"]
        elif isinstance(value, list):
            args += [flag, *map(str, value)]
        else:
            args += [flag, str(value)]
    return args


def torchrun(config: dict[str, Any], processes: int = 2, script: Path | str | None = None,
             env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node N $(which seg-perception) train ...`` on the CPU."""
    assert SEG_PERCEPTION, "the seg-perception console script is not installed next to this Python"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
               str(script or SEG_PERCEPTION), *_args(config)]
    full_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo",
                **(env or {})}
    return subprocess.run(command, cwd=REPO_ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)


def _log(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_rank_samples_are_blocks_of_the_global_batch() -> None:
    one = list(RankSamples(0, 3, 4))
    ranks = [list(RankSamples(0, 3, 2, rank, 2)) for rank in range(2)]
    assert one == list(range(12))
    # rank blocks side by side are the single process's batches
    for iteration in range(3):
        assert ranks[0][2 * iteration:2 * iteration + 2] + ranks[1][2 * iteration:2 * iteration + 2] == \
            one[4 * iteration:4 * iteration + 4]
    assert list(RankSamples(1, 3, 2, 1, 2)) == [6, 7, 10, 11] and len(RankSamples(1, 3, 2, 1, 2)) == 4


@pytest.fixture(scope="module")
def runs(drive: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same 3 iterations: one process of batch 2b, and two torchrun processes of batch b with
    --sync-bn (both validating on the 4 frames)."""
    import train_entry  # noqa: F401  (registers tiny_bn in this process too)

    out = tmp_path_factory.mktemp("ddp_runs")
    config = dict(COMMON, data=[str(drive)], val=[str(drive)], val_split="train", iterations=3, val_every=2,
                  model="tiny_bn")
    train(TrainConfig(out=str(out / "single"), batch_size=2 * BATCH, **config))
    run = torchrun(dict(config, out=str(out / "ddp"), batch_size=BATCH, sync_bn=True), script=ENTRY)
    return {"single": out / "single", "ddp": out / "ddp", "run": run, "drive": drive}


def test_two_processes_with_sync_bn_end_with_the_weights_of_one_process_of_the_global_batch(runs) -> None:
    run = runs["run"]
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    single, ddp = read_checkpoint(runs["single"] / "last.pth"), read_checkpoint(runs["ddp"] / "last.pth")
    assert ddp["meta"]["iteration"] == single["meta"]["iteration"] == 3
    assert ddp["meta"]["world_size"] == 2 and single["meta"]["world_size"] == 1
    assert ddp["state_dict"].keys() == single["state_dict"].keys()  # loads into the plain model
    moved = 0
    torch.manual_seed(COMMON["seed"])
    initial = build_model("tiny_bn").state_dict()  # what both runs started from
    for key, value in single["state_dict"].items():
        torch.testing.assert_close(ddp["state_dict"][key], value, rtol=1e-5, atol=1e-6, msg=key)
        moved += not torch.equal(initial[key], value)
    assert moved > 10  # the comparison covers weights that training changed, BN statistics included
    assert ddp["history"]["loss"] == pytest.approx(single["history"]["loss"], rel=1e-5)
    assert ddp["history"]["lr"] == single["history"]["lr"]


def test_validation_runs_once_over_all_frames_and_matches_one_process(runs) -> None:
    single, ddp = read_checkpoint(runs["single"] / "last.pth"), read_checkpoint(runs["ddp"] / "last.pth")
    assert ddp["history"]["val_iteration"] == single["history"]["val_iteration"] == [2, 3]
    assert ddp["history"]["val_miou"] == pytest.approx(single["history"]["val_miou"], abs=1e-9)
    # each frame validated once: the pixels counted are those of the 4 frames, not twice as many
    frames = Frames(collect_samples([str(runs["drive"])], "train", runs["drive"] / "cache", "", "", False),
                    cityscapes_mapping())
    labelled = sum(int((frames[i][1] != 255).sum()) for i in range(len(frames)))
    for run in ("single", "ddp"):
        assert [r["val"]["pixels"] for r in _log(runs[run]) if "val" in r] == [labelled, labelled], run


def test_rank_0_alone_writes_and_the_log_says_the_world_size(runs) -> None:
    out, run = runs["ddp"], runs["run"]
    log = _log(out)
    assert log[0]["world_size"] == 2 and log[0]["global_batch"] == 2 * BATCH and log[0]["sync_bn"] is True
    assert log[0]["backend"] == "gloo"
    assert [r["iteration"] for r in log if "loss" in r] == [1, 2, 3]  # one line per iteration, not per rank
    assert [r["iteration"] for r in log if "val" in r] == [2, 3]
    printed = run.stdout + run.stderr
    assert printed.count("train: world size 2 (gloo, this is rank 0)") == 1
    assert "global batch 4; synchronised batch norm" in printed
    assert printed.count("trained 3 iterations") == 1
    for name in ("best.pth", "last.pth", "loss.png", "val_miou.png"):
        assert (out / name).stat().st_size > 0
    assert not list(out.glob(".*.tmp"))


def test_without_torchrun_the_run_is_a_single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = distributed.setup(torch.device("cpu"))
    assert (ctx.rank, ctx.world_size, ctx.enabled, ctx.is_main) == (0, 1, False, True)
    assert ctx.from_main(lambda a: a + 1, 1) == 2
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun --nproc-per-node 1
    assert not distributed.setup(torch.device("cpu")).enabled


def test_a_rank_that_dies_fails_the_run_with_the_reason_and_resume_finishes_it(drive: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = dict(COMMON, data=[str(drive)], out=str(out), iterations=5, val_every=2, batch_size=BATCH,
                  val=[str(drive)], val_split="train")
    run = torchrun(config, script=ENTRY, env={"FAIL_RANK": "1", "FAIL_AT_ITERATION": "3"})
    printed = run.stdout + run.stderr
    assert run.returncode != 0, printed[-4000:]
    assert "injected failure: rank 1 lost its device at iteration 3" in printed, printed[-4000:]
    assert "rank      : 1" in printed  # the launcher's summary names the rank that failed first
    # The checkpoint of iteration 2 is whole; nothing half-written took its place.
    last = read_checkpoint(out / "last.pth")
    assert last["meta"]["iteration"] == 2 and set(last) >= {"state_dict", "optimizer", "history"}
    assert not list(out.glob(".*.tmp"))

    resumed = torchrun(dict(config, resume=str(out / "last.pth")))  # the documented command, unchanged
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-4000:]
    assert f"resumed from {out / 'last.pth'} at iteration 2" in resumed.stdout
    final = read_checkpoint(out / "last.pth")
    assert final["meta"]["iteration"] == 5 and final["history"]["iteration"] == [1, 2, 3, 4, 5]
    # Without --sync-bn each rank's batch-norm statistics differ; the sharded validation used rank
    # 0's, i.e. it scored exactly the model saved.
    model = load_checkpoint(build_model("regseg"), out / "last.pth")
    frames = Frames(collect_samples([str(drive)], "train", tmp_path / "cache", "", "", False), cityscapes_mapping())
    alone = validate(model, frames, torch.device("cpu"), False, CLASS_NAMES)
    assert final["meta"]["val_miou"] == pytest.approx(alone["miou"], abs=1e-6)
    log = _log(out)
    starts = [i for i, record in enumerate(log) if "start_iteration" in record]
    assert [log[i]["start_iteration"] for i in starts] == [0, 2]
    assert [r["iteration"] for r in log[starts[1]:] if "loss" in r] == [3, 4, 5]


def test_a_failing_save_leaves_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from seg_perception.training import trainer

    path = tmp_path / "last.pth"
    trainer._save(path, {"meta": {"iteration": 2}})

    def torn(payload: Any, f: Any) -> None:
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(trainer.torch, "save", torn)
    with pytest.raises(OSError, match="No space left"):
        trainer._save(path, {"meta": {"iteration": 4}})
    monkeypatch.undo()
    assert read_checkpoint(path)["meta"]["iteration"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth"]
