"""The seg-perception command line: model list and the engine benchmark."""

from __future__ import annotations

import json

import pytest

from seg_perception.cli import main, parse_size
from seg_perception.models import build_model, count_parameters


def test_models_lists_every_variant_with_parameter_count(capsys) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[1].startswith("regseg") and "exp48_decoder26 (default)" in lines[1]
    assert "3,334,951" in lines[1]
    for name in ("deeplabv3plus", "refinenet", "deeplabv1", "hrnet_ocr"):
        assert any(line.startswith(name) for line in lines), name
    assert f"{count_parameters(build_model('regseg', variant='exp53_decoder29')):,}" in out
    assert lines[-1].startswith("onnx") and "weights: FILE.onnx" in lines[-1]


def test_bench_prints_table_and_writes_json(tmp_path, capsys) -> None:
    out_file = tmp_path / "bench.json"
    assert main(["bench", "--model", "regseg", "--size", "64x128", "--device", "cpu", "--iterations", "5",
                 "--warmup", "1", "--out", str(out_file)]) == 0
    table = capsys.readouterr().out
    assert "| inference |" in table and "p99" in table
    report = json.loads(out_file.read_text())
    assert report["size"] == [64, 128] and report["iterations"] == 5
    assert set(report["stages_ms"]) == {"upload", "preprocess", "inference", "postprocess", "download"}
    stages = report["stages_ms"]
    assert stages["inference"]["p50"] > 0
    assert stages["inference"]["p50"] <= stages["inference"]["p90"] <= stages["inference"]["p99"]
    assert report["engine"]["precision"] == "fp32" and report["machine"]["torch"]


def test_bench_rejects_fp16_on_cpu(capsys) -> None:
    assert main(["bench", "--size", "32x32", "--device", "cpu", "--precision", "fp16"]) == 2
    assert "fp16 needs device cuda" in capsys.readouterr().err


@pytest.mark.parametrize("text, expected", [("512x1024", (512, 1024)), ("1024X2048", (1024, 2048))])
def test_parse_size(text, expected) -> None:
    assert parse_size(text) == expected
