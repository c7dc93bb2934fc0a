"""``seg-perception mine --workers N`` on a local Ray instance chooses exactly what one process
chooses (scores are exact, ties broken by drive, camera, frame), whatever worker scored which drive."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from seg_perception.cli import main
from seg_perception.evaluation.drives.ray_runner import LOCAL_ENV, import_ray
from seg_perception.evaluation.sample_drive import make_sample_drive, parse_cameras

for _key, _value in LOCAL_ENV.items():  # read by Ray when first imported, which skipping checks
    os.environ.setdefault(_key, _value)
pytest.importorskip("ray")
SIZE = (48, 96)


@pytest.fixture(scope="module")
def ray_local():
    ray = import_ray(local=True)
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024 * 1024, log_to_driver=False)
    yield ray
    ray.shutdown()


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "mined.csv").open() as f:
        return list(csv.DictReader(f))


def test_ray_workers_choose_what_one_process_chooses(ray_local, tmp_path: Path) -> None:
    bags = [make_sample_drive(tmp_path / "d0", frames=8, size=SIZE, seed=0, progress=False, style="rain").bag,
            make_sample_drive(tmp_path / "d1", frames=6, size=SIZE, seed=1, progress=False, style="fog",
                              cameras=parse_cameras("front,left"), compressed="png").bag,
            make_sample_drive(tmp_path / "d2", frames=6, size=SIZE, seed=2, progress=False).bag]
    common = ["mine", "--weights", "synthetic_street", "--device", "cpu", "--threads", "1", "--no-progress",
              "--top", "10", "--min-gap-s", "0.1"]
    for bag in bags:
        common += ["--bag", str(bag)]
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    assert main([*common, "--out", str(tmp_path / "ray"), "--workers", "2", "--chunk-frames", "4"]) == 0
    one, ray = _rows(tmp_path / "one"), _rows(tmp_path / "ray")
    assert len(one) == 10
    assert one == ray
    summary = json.loads((tmp_path / "ray" / "mining.json").read_text())
    assert summary["execution"]["runner"] == "ray" and summary["execution"]["workers"] == 2
    assert summary["frames"]["read"] == 8 + 2 * 6 + 6
