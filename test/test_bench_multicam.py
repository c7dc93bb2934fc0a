"""bench/multicam.py's plain parts: what each variant starts, and the per-camera summary."""

from __future__ import annotations

import argparse
import importlib.util

from conftest import REPO_ROOT

_spec = importlib.util.spec_from_file_location("multicam", REPO_ROOT / "bench" / "multicam.py")
multicam = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(multicam)


def _args(**overrides: object) -> argparse.Namespace:
    values = {"device": "cpu", "precision": "fp32", "max_age_ms": 500.0, "weights": "", "inference_size": None,
              "batch_wait_ms": 2.0}
    return argparse.Namespace(**{**values, **overrides})


def test_variants_start_one_batched_node_one_round_robin_node_or_one_node_per_camera() -> None:
    cameras = multicam.camera_names(3)
    batched = multicam.node_commands(_args(), "batched", cameras)
    round_robin = multicam.node_commands(_args(), "round_robin", cameras)
    per_camera = multicam.node_commands(_args(), "per_camera", cameras)
    assert len(batched) == len(round_robin) == 1 and len(per_camera) == 3
    assert 'cameras:=["cam0", "cam1", "cam2"]' in batched[0] and "max_batch_size:=0" in batched[0]
    assert "max_batch_size:=1" in round_robin[0]
    assert "cam2.image_topic:=/bench/cam2/image" in batched[0] and "__ns:=/mc" in batched[0]
    for camera, command in zip(cameras, per_camera, strict=True):
        assert f"__ns:=/mc/{camera}" in command and f"image_topic:={multicam.input_topic(camera)}" in command
        assert not any(arg.startswith("cameras:=") for arg in command)


def test_summary_counts_drops_and_flags_a_starved_camera() -> None:
    summary = multicam.summarize({"a": 10, "b": 10}, {"a": [10.0] * 10, "b": [20.0] * 4}, 2.0, 900.0)
    assert summary["cameras"]["b"]["drops"] == 6 and summary["cameras"]["a"]["processed_fps"] == 5.0
    assert summary["total_processed_fps"] == 7.0 and not summary["no_camera_starved"]
    fair = multicam.summarize({"a": 10, "b": 10}, {"a": [1.0] * 9, "b": [1.0] * 10}, 2.0, 900.0)
    assert fair["no_camera_starved"] and fair["cameras"]["a"]["latency_ms"]["p50"] == 1.0
