"""INT8 calibration data: each kind read and spread over the data, bad data refused with one clear
error, and who may name calibration data at run time. No quantization here (test_int8.py)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from seg_perception import params as P
from seg_perception.backends.calibration import CalibrationError, calibration_kind, read_calibration, spread
from seg_perception.engine_api import EngineConfig, EngineConfigError
from seg_perception.evaluation.bag_io import DriveBagWriter
from seg_perception.evaluation.sample_drive import make_sample_drive, render_drive
from seg_perception.parameter_state import ParameterState
from seg_perception.text import TEXT_LIMIT

SIZE = (32, 64)
FRAMES = 10


@pytest.fixture(scope="module")
def drive(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same 10 rendered frames as a raw bag, a JPEG bag, a Cityscapes folder and image files."""
    root = tmp_path_factory.mktemp("calibration")
    raw = make_sample_drive(root / "raw", FRAMES, SIZE, seed=3, progress=False)
    jpeg = make_sample_drive(root / "jpeg", FRAMES, SIZE, seed=3, progress=False, compressed="jpeg")
    images = root / "images"
    (images / "sub").mkdir(parents=True)
    for i, (rgb, _) in enumerate(render_drive(FRAMES, *SIZE, seed=3)):
        folder = images if i % 2 else images / "sub"  # sub-folders are read too, in path order
        cv2.imwrite(str(folder / f"f{i:02d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    (images / "notes.txt").write_text("not an image")
    return {"bag": raw.bag, "bag_compressed": jpeg.bag, "cityscapes": raw.cityscapes, "images": images}


@pytest.fixture(scope="module")
def rendered() -> list[np.ndarray]:
    return [rgb for rgb, _ in render_drive(FRAMES, *SIZE, seed=3)]


@pytest.mark.parametrize("name, kind", [("bag", "bag"), ("bag_compressed", "bag"), ("cityscapes", "cityscapes"),
                                        ("images", "images")])
def test_each_kind_of_data_gives_frames_spread_over_it(drive: dict[str, Path], rendered: list[np.ndarray],
                                                       name: str, kind: str) -> None:
    data = read_calibration(drive[name], frames=4)
    assert data.kind == kind == calibration_kind(drive[name])
    assert data.available == FRAMES
    assert len(data.calibration) == 4 and len(data.holdout) == 4
    calibration, holdout = spread(FRAMES, 4)
    frames = list(data.calibration) + list(data.holdout)
    for index, frame in zip(calibration + holdout, frames, strict=True):
        assert frame.dtype == np.uint8 and frame.shape == (*SIZE, 3)
        expected = rendered[index] if name != "images" else _image_order(rendered)[index]
        difference = np.abs(frame.astype(int) - expected.astype(int)).mean()
        assert difference < (8 if name == "bag_compressed" else 1e-9), (name, index, difference)
    assert str(drive[name]) in data.describe() and "4 of 10 frames" in data.describe()


def _image_order(rendered: list[np.ndarray]) -> list[np.ndarray]:
    """The image folder's frames in path order: f01, f03, ... then sub/f00, sub/f02, ..."""
    return [rendered[i] for i in [*range(1, FRAMES, 2), *range(0, FRAMES, 2)]]


def test_the_digest_follows_the_frames_used(drive: dict[str, Path], tmp_path: Path) -> None:
    first = read_calibration(drive["bag"], frames=4)
    assert read_calibration(drive["bag"], frames=4).digest == first.digest
    assert read_calibration(drive["bag"], frames=3).digest != first.digest  # other frames of the same data
    other = make_sample_drive(tmp_path / "other", FRAMES, SIZE, seed=4, progress=False)
    assert read_calibration(other.bag, frames=4).digest != first.digest


def test_spread_covers_the_data_and_holds_frames_out() -> None:
    calibration, holdout = spread(100, 16)
    assert len(calibration) == 16 and len(holdout) == 4
    assert not set(calibration) & set(holdout)
    assert calibration[0] < 10 and calibration[-1] > 90  # start and end of the drive, not its first second
    assert holdout[0] > calibration[0] and holdout[-1] < 100 and holdout == sorted(holdout)
    assert spread(3, 16) == ([0, 2], [1])  # short data: most frames calibrate, one is held out
    assert spread(1, 16) == ([0], [])
    assert spread(0, 16) == ([], [])


def test_large_frames_are_scaled_to_the_pixel_cap(drive: dict[str, Path]) -> None:
    data = read_calibration(drive["cityscapes"], frames=2, max_pixels=16 * 32)
    assert all(frame.shape == (16, 32, 3) for frame in data.calibration)


def _corrupt_images(tmp_path: Path) -> Path:
    folder = tmp_path / "broken"
    folder.mkdir()
    rgb = np.full((8, 8, 3), 100, np.uint8)
    cv2.imwrite(str(folder / "a.png"), rgb)
    (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n SECRET-CONTENT " * 20)  # a damaged file
    return folder


def _bag_without_cameras(tmp_path: Path) -> Path:
    path = tmp_path / "gt_only"
    with DriveBagWriter(path, image_topic="/camera/semantic_gt", gt_topic="/other/semantic_gt") as writer:
        writer.write(1, "cam", np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8))
    return path


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("file", "is a file"),
    ("empty folder", "is not a drive bag"),
    ("text files", "is not a drive bag"),
    ("damaged image", "cannot be read: 'b.png'"),
    ("bag without cameras", "has no camera image topic"),
    ("empty cityscapes", "is an empty cityscapes"),
])
def test_bad_calibration_data_is_one_clear_error(tmp_path: Path, case: str, message: str) -> None:
    paths = {"missing": lambda: tmp_path / "nowhere", "file": lambda: _file(tmp_path / "f.png"),
             "empty folder": lambda: _folder(tmp_path / "empty"),
             "text files": lambda: _file(tmp_path / "texts" / "a.txt").parent,
             "damaged image": lambda: _corrupt_images(tmp_path),
             "bag without cameras": lambda: _bag_without_cameras(tmp_path),
             "empty cityscapes": lambda: _folder(tmp_path / "cs" / "leftImg8bit").parent}
    with pytest.raises(CalibrationError) as error:
        read_calibration(paths[case](), frames=4)
    assert message in str(error.value)
    assert len(str(error.value)) <= 1000 and "SECRET" not in str(error.value)


def _file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def _folder(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


# -- refusal up front: parameters and engine configuration ------------------------------------------
def valid_values() -> dict:
    return {**P.defaults(), "device": "cpu"}


def test_int8_without_calibration_is_refused_with_the_reason(drive: dict[str, Path]) -> None:
    with pytest.raises(EngineConfigError, match="precision int8 needs calibration data"):
        EngineConfig(device="cpu", precision="int8").validate()
    problems = P.validate_params({**valid_values(), "precision": "int8"})
    assert problems and "needs calibration data" in problems[0]
    assert P.validate_params({**valid_values(), "precision": "int8", "calibration": str(drive["images"])}) == []
    with pytest.raises(EngineConfigError, match="no int8 path"):
        EngineConfig(device="cpu", precision="int8", backend="torch", calibration=str(drive["images"])).validate()
    with pytest.raises(EngineConfigError, match="needs compile none"):
        EngineConfig(device="cpu", precision="int8", compile="torch_compile", calibration="x").validate()
    with pytest.raises(EngineConfigError, match="parity_min_agreement"):
        EngineConfig(device="cpu", parity_min_agreement=1.5).validate()


def test_calibration_parameter_is_checked_by_kind(drive: dict[str, Path], tmp_path: Path) -> None:
    assert P.validate_param("calibration", str(drive["bag"])) is None
    assert "does not exist" in P.validate_param("calibration", str(tmp_path / "nowhere"))
    assert "is a file" in P.validate_param("calibration", str(_file(tmp_path / "x.bin")))
    assert len(P.validate_param("calibration", "/" + "x" * 5000)) <= TEXT_LIMIT


def test_runtime_calibration_is_limited_to_calibration_dirs(drive: dict[str, Path], tmp_path: Path) -> None:
    values = {**valid_values(), "calibration": str(drive["bag"])}
    state = ParameterState(values, {}, ["/"])  # default: the folder holding the startup data
    assert state.check([("calibration", str(drive["cityscapes"]))]).successful  # a sibling of the startup data
    outside = [str(tmp_path / "elsewhere"), "/etc", str(drive["bag"]) + "/../../../../etc"]
    reasons = {state.check([("calibration", path)]).reason.split(" is outside")[1] for path in outside}
    assert len(reasons) == 1 and "calibration_dirs" in reasons.pop()  # the same answer, existing or not
    assert state.check([("calibration", "")]).successful  # none: nothing is read
    configured = ParameterState({**valid_values(), "calibration_dirs": [str(tmp_path)]}, {}, ["/"])
    assert not configured.check([("calibration", str(drive["bag"]))]).successful
    assert "node started without calibration data" in ParameterState(valid_values(), {}, ["/"]).check(
        [("calibration", str(drive["bag"]))]).reason
