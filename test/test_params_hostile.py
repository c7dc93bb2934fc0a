"""Hostile parameter values: refused at set time, never expanded, and every message bounded."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from seg_perception import params as P
from seg_perception.diagnostics import Thresholds, camera_report, engine_report, merge_reports
from seg_perception.models.checkpoint import CheckpointNotFoundError, NotACheckpointFileError, load_checkpoint
from seg_perception.text import TEXT_LIMIT, bounded

#: 236 bytes that expand to 9**6 list items through aliases (an "alias bomb").
ALIAS_BOMB = ("{a: &a [x,x,x,x,x,x,x,x,x], b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a], c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b],"
              " d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c], e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d], f: [*e,*e,*e,*e]}")
HOSTILE = {
    "huge": "x" * 1_000_000,
    "alias_bomb": ALIAS_BOMB,
    "nested": "{a: " * 2000 + "1" + "}" * 2000,
    "control": "\x00\x1b[2J\n" * 1000,
    "long_list": "{scales: [" + ",".join(["0.5"] * 5000) + "]}",
}


def valid_values() -> dict:
    return {**P.defaults(), "device": "cpu", "precision": "fp32"}


def test_every_string_parameter_is_listed() -> None:
    assert {"model", "variant", "weights", "model_options", "crf_options", "image_topic"} <= set(P.STRING_PARAMS)


@pytest.mark.parametrize("name", P.STRING_PARAMS)
@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_string_values_are_refused_quickly_with_bounded_reasons(name: str, kind: str) -> None:
    started = time.perf_counter()
    problems = P.validate_params({**valid_values(), name: HOSTILE[kind]})
    assert time.perf_counter() - started < 5.0  # nothing was expanded
    assert all(len(p) <= TEXT_LIMIT for p in problems)
    if name == "weights" and not problems:  # a path that does not exist is the loader's to report
        with pytest.raises(CheckpointNotFoundError) as error:
            load_checkpoint(None, HOSTILE[kind])
        assert len(str(error.value)) <= TEXT_LIMIT
        return
    assert problems, f"{name}={kind} was accepted"


@pytest.mark.parametrize("name", ["model_options", "crf_options"])
def test_yaml_aliases_are_refused_even_when_small(name: str) -> None:
    problems = P.validate_params({**valid_values(), name: "{a: &x 1, b: *x}"})
    assert problems and "aliases" in problems[0]


def test_option_values_are_checked_at_set_time() -> None:
    hrnet = {**valid_values(), "model": "hrnet_ocr"}
    assert P.validate_params({**hrnet, "model_options": "{scales: [0.5, 1]}"}) == []
    assert "scales must be a list of numbers" in P.validate_params({**hrnet, "model_options": "{scales: [a]}"})[0]
    assert "align_corners must be bool" in P.validate_params({**hrnet, "model_options": "{align_corners: 3}"})[0]
    assert "must be a number" in P.validate_params({**hrnet, "model_options": "{scales: {a: 1}}"})[0]
    assert "iterations" in P.validate_params({**valid_values(), "crf_options": "{iterations: 0}"})[0]
    assert "unexpected keyword argument 'w9'" in P.validate_params({**valid_values(), "crf_options": "{w9: 1}"})[0]
    assert "must be > 0" in P.validate_params({**valid_values(), "crf_options": "{gaussian_xy_std: -1}"})[0]


def test_class_count_and_inference_size_have_upper_bounds() -> None:
    assert P.validate_params({**valid_values(), "num_classes": 255}) == []
    assert "[1, 255]" in P.validate_params({**valid_values(), "num_classes": 256})[0]
    assert P.validate_params({**valid_values(), "inference_size": [1024, 2048]}) == []
    assert "at most 8192" in P.validate_params({**valid_values(), "inference_size": [1024, 100000]})[0]


@pytest.mark.parametrize("kind", ["directory", "device", "fifo"])
def test_weights_that_are_not_files_say_what_they_are(kind: str, tmp_path: Path) -> None:
    path = {"directory": tmp_path, "device": Path("/dev/null"), "fifo": tmp_path / "pipe"}[kind]
    if kind == "fifo":
        os.mkfifo(path)
    expected = {"directory": "a directory", "device": "a character device", "fifo": "a named pipe"}[kind]
    problems = P.validate_params({**valid_values(), "weights": str(path)})
    assert problems and expected in problems[0]
    with pytest.raises(NotACheckpointFileError, match=expected):  # never opened: a FIFO cannot block
        load_checkpoint(None, path)
    with pytest.raises(CheckpointNotFoundError, match="does not exist"):
        load_checkpoint(None, tmp_path / "missing.pth")


def test_diagnostics_values_and_message_are_bounded() -> None:
    stages = {"inference": dict.fromkeys(("p50", "p90", "p99", "max"), 1.0)}
    books = {"received": 1, "processed": 1, "dropped_total": 0, "rejected_total": 0, "in_flight": 0,
             "dropped": {}, "rejected": {}}
    report = merge_reports(
        engine_report(stages=stages, engine={"weights": "w" * 100_000}, last_error="e" * 100_000,
                      failure_burst=True, consecutive_failures=9, reload_error="r" * 100_000,
                      startup_error="s" * 100_000),
        camera_report(end_to_end={"p50": 1, "p90": 1, "p99": 1, "max": 1, "count": 1}, accounting=books,
                      interval_received=1, interval_lost=0, input_rate_hz=1.0, output_rate_hz=1.0,
                      thresholds=Thresholds()))
    assert max(len(v) for v in report.values.values()) <= TEXT_LIMIT
    assert len(report.message) <= 1000
    assert report.values["last_error"].endswith("more chars]")


def test_bounded_keeps_short_text_and_says_how_much_was_cut() -> None:
    assert bounded("abc", 10) == "abc"
    cut = bounded("x" * 1000, 100)
    assert len(cut) == 100 and cut.startswith("x") and "more chars]" in cut


@pytest.mark.ros
def test_node_set_results_logs_and_diagnostics_stay_bounded(tmp_path: Path) -> None:
    from functools import partial

    from rclpy.parameter import Parameter
    from reliability_support import FakeEngine
    from ros_harness import RosHarness, wait_for

    from seg_perception.node import SegmentationNode

    def factory(config):  # a loader whose error echoes the weights path
        if config.weights:
            raise CheckpointNotFoundError(f"weights file {config.weights!r} does not exist")
        return FakeEngine(config)

    ros = RosHarness()
    try:
        # Runtime weights may only come from tmp_path: every hostile value below is refused at set
        # time, so no load is running when the long path is set (it is the only one started).
        node = ros.add(partial(SegmentationNode, engine_factory=factory), device="cpu", precision="fp32",
                       weights_dirs=[str(tmp_path)])
        for name in P.STRING_PARAMS:
            for kind, value in HOSTILE.items():
                (result,) = node.set_parameters([Parameter(name, value=value)])
                assert len(result.reason) <= 2000, (name, kind)
                assert not result.successful, (name, kind)
                if name == "weights":
                    assert "outside weights_dirs" in result.reason, (kind, result.reason)
        assert node.scheduler.loading is None
        long_path = str(tmp_path / ("w" * 3000))  # accepted (a missing file is the loader's to report)
        (result,) = node.set_parameters([Parameter("weights", value=long_path)])
        assert result.successful and len(result.reason) <= 2000
        assert wait_for(lambda: node.scheduler.reload_error is not None, timeout=30.0)
        (status,) = node.diagnostics().status
        assert "model reload failed" in status.message and len(status.message) <= 1000
        assert all(len(kv.value) <= 500 for kv in status.values)
    finally:
        ros.close()


def test_cache_dir_is_an_absolute_folder(tmp_path: Path) -> None:
    values = valid_values()
    assert P.validate_params({**values, "cache_dir": str(tmp_path)}) == []
    assert P.validate_params({**values, "cache_dir": "~/.cache/seg"}) == []
    assert "absolute" in P.validate_params({**values, "cache_dir": "cache/seg"})[0]
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert "not a folder" in P.validate_params({**values, "cache_dir": str(a_file)})[0]
