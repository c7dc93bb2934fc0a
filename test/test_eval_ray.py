"""Many drives on a local Ray instance: the same numbers as one process, and a killed worker's
drive retried and accounted for. Ray starts once for the module (2 CPUs, no dashboard, small
object store, every socket on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from seg_perception.cli import main
from seg_perception.evaluation.bag_io import find_cameras
from seg_perception.evaluation.drives.plan import collect_drives
from seg_perception.evaluation.drives.ray_runner import FRAME_DELAY_ENV, LOCAL_ENV, RayOptions, import_ray
from seg_perception.evaluation.evaluate import EvalOptions, evaluate, resolve_params
from seg_perception.evaluation.metrics import summarize
from seg_perception.evaluation.sample_drive import make_sample_drive, parse_cameras

for _key, _value in LOCAL_ENV.items():  # read by Ray when first imported, which skipping checks
    os.environ.setdefault(_key, _value)
pytest.importorskip("ray")
SIZE = (48, 96)


@pytest.fixture(scope="module")
def ray_local():
    ray = import_ray(local=True)  # loopback-only configuration, set before Ray starts
    # Workers wait 50 ms per frame, so a drive lasts longer than the workers' progress reports and
    # the killed-worker test can stop one mid-drive (frames are ~5 ms each with ONNX Runtime).
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024 * 1024, log_to_driver=False,
             runtime_env={"env_vars": {FRAME_DELAY_ENV: "0.05"}})
    assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def drives(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("ray_drives")
    return [
        make_sample_drive(root / "d0", frames=10, size=SIZE, seed=0, progress=False).bag,
        make_sample_drive(root / "d1", frames=6, size=SIZE, seed=1, progress=False,
                          cameras=parse_cameras("front,left"), compressed="png").bag,
        make_sample_drive(root / "d2", frames=8, size=SIZE, seed=2, progress=False).bag,
    ]


@pytest.fixture(scope="module")
def one_by_one(drives: list[Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, np.ndarray]]:
    """Each camera of each drive through the single-bag evaluator, one after the other."""
    values = resolve_params(device="cpu")
    out: dict[str, dict[str, np.ndarray]] = {}
    for bag in drives:
        out[bag.parent.name] = {}
        for camera in find_cameras(bag):
            report, _ = evaluate(EvalOptions(bag=bag, out=tmp_path_factory.mktemp("single"), mode="offline",
                                             overlays=0, threads=1, progress=False, image_topic=camera.image_topic,
                                             gt_topic=camera.gt_topic), values)
            out[bag.parent.name][camera.name] = np.asarray(report["pooled"]["metrics"]["confusion_matrix"])
    return out


def _total(one_by_one: dict[str, dict[str, np.ndarray]]) -> np.ndarray:
    return sum(m for cams in one_by_one.values() for m in cams.values())


def test_two_ray_workers_give_the_numbers_of_one_process(ray_local, drives, one_by_one, tmp_path: Path) -> None:
    out = tmp_path / "report"
    args = ["eval", "--out", str(out), "--device", "cpu", "--workers", "2", "--no-progress", "--threads", "1"]
    for bag in drives:
        args += ["--bag", str(bag)]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    pooled = np.asarray(report["pooled"]["metrics"]["confusion_matrix"])
    np.testing.assert_array_equal(pooled, _total(one_by_one))
    assert report["pooled"]["metrics"]["miou"] == pytest.approx(summarize(_total(one_by_one))["miou"], abs=0)
    for row in report["drives"]:
        expected = one_by_one[Path(row["path"]).parent.name]
        assert set(row["cameras"]) == set(expected)
        for camera, matrix in expected.items():
            np.testing.assert_array_equal(np.asarray(row["cameras"][camera]["confusion_matrix"]), matrix)
            assert row["cameras"][camera]["miou"] == summarize(matrix)["miou"]
    assert report["pooled"]["frames"]["evaluated"] == 10 + 2 * 6 + 8 and report["pooled"]["frames"]["all_accounted"]
    execution = report["execution"]
    assert execution["runner"] == "ray" and execution["workers"] == 2
    assert sum(w["frames"] for w in execution["per_worker"]) == 30
    assert all(w["tasks"] >= 1 and w["fps"] > 0 for w in execution["per_worker"])  # both workers took drives
    assert execution["cluster_resources"]["CPU"] == 2
    assert report["versions"]["ray"] and set(report["cameras"]) == {"camera", "front", "left"}


def test_a_killed_worker_drive_is_retried_and_every_frame_accounted(ray_local, drives, one_by_one,
                                                                    tmp_path: Path) -> None:
    killed: list[tuple[int, int]] = []

    def kill_mid_drive(progress) -> None:
        if killed:
            return
        for pid, task_id, done in progress.in_flight.values():
            if done >= 1 and pid > 0:
                os.kill(pid, signal.SIGKILL)
                killed.append((pid, task_id))
                return

    options = EvalOptions(drives=collect_drives([str(b) for b in drives]), out=tmp_path, mode="offline",
                          progress=False, ray=RayOptions(workers=2, threads=1, max_retries=1))
    report, _ = evaluate(options, resolve_params(device="cpu"), on_progress=kill_mid_drive)
    assert killed, "no worker was killed mid-drive"
    retried = [d for d in report["drives"] if d["retries"]]
    assert len(retried) == 1 and retried[0]["attempts"] == 2
    assert "died" in retried[0]["retries"][0] and str(killed[0][0]) in retried[0]["retries"][0]
    assert all(d["status"] == "ok" for d in report["drives"])
    # The retried drive is counted once: the pooled matrix is still exactly one process's.
    np.testing.assert_array_equal(np.asarray(report["pooled"]["metrics"]["confusion_matrix"]), _total(one_by_one))
    frames = report["pooled"]["frames"]
    assert frames["in_bag"] == frames["read"] == frames["evaluated"] == 30 and frames["all_accounted"]
    workers = report["execution"]["per_worker"]
    assert [w["alive"] for w in workers].count(False) == 1
    assert sum(w["frames"] for w in workers) == 30  # the dead worker's partial drive is not counted
