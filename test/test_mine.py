"""``seg-perception mine``: the score ranks an unsure frame first, near-duplicates are dropped (time
gap and image similarity), ties are broken as documented, the output is a Cityscapes folder that
``train`` takes, with ``mined.csv`` and a contact sheet, on drives without ground truth, compressed
and multi-camera, ``--cameras``, and a broken drive reported while the others are mined; and
``make-sample-drive --style`` renders a shifted domain deterministically."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from rosbags.rosbag2 import Writer

from seg_perception.cityscapes import TRAIN_ID_TO_LABEL_ID, train_ids_to_label_ids
from seg_perception.cli import main
from seg_perception.evaluation.bag_io import (
    COMPRESSED_TYPE,
    IMAGE_TYPE,
    TYPESTORE,
    BagError,
    CameraTopics,
    DriveBag,
    compressed_image_message,
    find_cameras,
    image_message,
    select_cameras,
)
from seg_perception.evaluation.cityscapes_folder import find_pairs, stamp_ns
from seg_perception.evaluation.drives.task import build_engine
from seg_perception.evaluation.evaluate import resolve_params
from seg_perception.evaluation.sample_drive import make_sample_drive, parse_cameras, render_drive
from seg_perception.evaluation.sample_styles import STYLES
from seg_perception.mining import export
from seg_perception.mining.scores import flip_disagreement, least_confidence, low_confidence_area
from seg_perception.mining.select import Candidate, rank_key, select, similarity, thumbnail

SIZE = (64, 128)
#: Mining needs a trained model: the shipped one is sure of the clear synthetic street.
WEIGHTS = "synthetic_street"


def write_image_bag(path: Path, frames: list[np.ndarray], cameras: tuple[str, ...] = ("camera",),
                    compressed: str | None = None, rate_hz: float = 17.0, corrupt: tuple[int, ...] = ()) -> Path:
    """A bag of camera images only (what a car records: no ground truth), every camera seeing the
    same frames at the same stamps; the compressed data of the ``corrupt`` frames is cut short."""
    with Writer(path, version=9) as writer:
        conns = {}
        for cam in cameras:
            topic = f"/{cam}/image_raw" + ("/compressed" if compressed else "")
            kind = COMPRESSED_TYPE if compressed else IMAGE_TYPE
            conns[cam] = writer.add_connection(topic, kind, typestore=TYPESTORE)
        for i, rgb in enumerate(frames):
            stamp = stamp_ns(i, rate_hz)
            for cam in cameras:
                if compressed:
                    msg, kind = compressed_image_message(stamp, cam, rgb, compressed), COMPRESSED_TYPE
                    if i in corrupt:
                        msg.data = msg.data[: len(msg.data) // 3]
                else:
                    msg, kind = image_message(stamp, cam, rgb, "rgb8"), IMAGE_TYPE
                writer.write(conns[cam], stamp, TYPESTORE.serialize_cdr(msg, kind))
    return path


def street(frames: int, seed: int = 3) -> list[np.ndarray]:
    return [rgb for rgb, _ in render_drive(frames, *SIZE, seed=seed)]


def noisy(rgb: np.ndarray, seed: int = 0) -> np.ndarray:
    """The frame half drowned in noise: the model is unsure of it."""
    noise = np.random.default_rng(seed).integers(0, 256, rgb.shape, dtype=np.uint8)
    return (0.5 * rgb + 0.5 * noise).astype(np.uint8)


def mine(*args: str) -> int:
    return main(["mine", "--weights", WEIGHTS, "--device", "cpu", "--threads", "1", "--no-progress", *args])


def rows(out: Path) -> list[dict[str, str]]:
    with (out / "mined.csv").open() as f:
        return list(csv.DictReader(f))


# -- scores -------------------------------------------------------------------------------------------
def test_scores_grow_with_how_unsure_the_model_is() -> None:
    sure, unsure = np.full((4, 8), 255, np.uint8), np.full((4, 8), 255, np.uint8)
    unsure[:2] = 102  # half the pixels at p_max 0.4
    assert least_confidence(sure) == 0.0
    assert least_confidence(unsure) == pytest.approx(0.5 * (1 - 102 / 255))
    assert low_confidence_area(sure) == 0.0 and low_confidence_area(unsure) == 0.5
    labels = np.zeros((4, 8), np.uint8)
    labels[:, :2] = 1  # the left quarter: mirrored, it moves to the right quarter
    assert flip_disagreement(labels, labels[:, ::-1]) == 0.0
    assert flip_disagreement(labels, labels) == 0.5


# -- selection ----------------------------------------------------------------------------------------
def _thumbs(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (24, 32), dtype=np.uint8) for _ in range(n)]


def _cand(drive: int, camera: str, index: int, score: float, thumb: np.ndarray, stamp_s: float | None = None
          ) -> Candidate:
    stamp = round((index / 17.0 if stamp_s is None else stamp_s) * 1e9)
    return Candidate(drive, camera, f"/{camera}/image_raw", index, stamp, score, thumb)


def test_ties_are_broken_by_drive_order_camera_name_then_frame_index() -> None:
    t = _thumbs(6)
    tied = [_cand(1, "front", 0, 0.5, t[0]), _cand(0, "right", 3, 0.5, t[1]), _cand(0, "left", 9, 0.5, t[2]),
            _cand(0, "left", 2, 0.5, t[3]), _cand(2, "a", 0, 0.7, t[4]), _cand(0, "a", 1, 0.1, t[5])]
    expected = [(2, "a", 0), (0, "left", 2), (0, "left", 9), (0, "right", 3), (1, "front", 0), (0, "a", 1)]
    for order in (tied, tied[::-1], tied[2:] + tied[:2]):
        chosen = select(order, 6, min_gap_s=0, max_similarity=1).chosen
        assert [(c.drive, c.camera, c.index) for c in chosen] == expected
    assert sorted(tied, key=rank_key) == select(tied, 6, 0, 1).chosen


def test_frames_within_the_gap_of_a_chosen_frame_of_the_same_camera_are_skipped() -> None:
    t = _thumbs(5)
    cands = [_cand(0, "front", 0, 0.9, t[0], 10.0), _cand(0, "front", 5, 0.8, t[1], 10.5),
             _cand(0, "left", 5, 0.7, t[2], 10.5), _cand(1, "front", 5, 0.6, t[3], 10.5),
             _cand(0, "front", 40, 0.5, t[4], 11.5)]
    picked = select(cands, 5, min_gap_s=1.0, max_similarity=1)
    assert [(c.drive, c.camera, c.index) for c in picked.chosen] == [(0, "front", 0), (0, "left", 5), (1, "front", 5),
                                                                     (0, "front", 40)]
    assert picked.near_in_time == 1
    assert len(select(cands, 5, min_gap_s=0.0, max_similarity=1).chosen) == 5
    # exactly the gap apart is far enough
    assert len(select(cands, 5, min_gap_s=0.5, max_similarity=1).chosen) == 5


def test_a_frame_like_a_chosen_one_is_skipped_whatever_its_drive() -> None:
    frames = street(12)
    parked = thumbnail(frames[2])
    noise = np.random.default_rng(1).normal(0, 4, frames[2].shape)
    again = thumbnail(np.clip(frames[2] + noise, 0, 255).astype(np.uint8))  # the same scene, new sensor noise
    brighter = np.clip(parked.astype(int) + 30, 0, 255).astype(np.uint8)  # exposure changed
    moved = thumbnail(frames[10])  # 8 m further on
    assert similarity(parked, again) > 0.97 and similarity(parked, brighter) > 0.97
    assert similarity(parked, moved) < 0.9
    cands = [_cand(0, "front", 2, 0.9, parked), _cand(1, "front", 7, 0.8, again), _cand(2, "rear", 1, 0.7, brighter),
             _cand(0, "front", 200, 0.6, moved)]
    picked = select(cands, 4, min_gap_s=0, max_similarity=0.95)
    assert [(c.drive, c.index) for c in picked.chosen] == [(0, 2), (0, 200)]
    assert picked.similar == 2
    assert len(select(cands, 4, min_gap_s=0, max_similarity=1).chosen) == 4


def test_similarity_compares_edges_not_the_haze_every_foggy_frame_shares() -> None:
    fog = [thumbnail(rgb) for rgb, _ in render_drive(13, *SIZE, seed=4, style="fog")]
    # 12 m apart: a different scene, though the plain thumbnails correlate at 0.97 (haze band, road)
    assert similarity(fog[0], fog[12]) < 0.85


def test_uniform_frames_are_alike_only_at_the_same_brightness() -> None:
    black, black2, grey = (np.full((24, 32), v, np.uint8) for v in (3, 6, 120))
    assert similarity(black, black2) == 1.0
    assert similarity(black, grey) == 0.0
    assert similarity(black, thumbnail(street(1)[0])) == 0.0
    picked = select([_cand(0, "c", 0, 0.9, black), _cand(0, "c", 99, 0.8, black2), _cand(0, "c", 50, 0.7, grey)], 3,
                    min_gap_s=0, max_similarity=0.95)
    assert [c.index for c in picked.chosen] == [0, 50]


def test_selection_settings_are_checked() -> None:
    for kw, message in (({"top": 0}, "--top"), ({"min_gap_s": -1}, "--min-gap-s"),
                        ({"max_similarity": 0}, "--max-similarity"), ({"max_similarity": 1.5}, "--max-similarity")):
        with pytest.raises(ValueError, match=message):
            select([], **{"top": 1, **kw})


# -- end to end -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def drives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mine_drives")
    frames = street(8)
    frames[5] = noisy(frames[5])
    other = street(4, seed=9)
    return {
        "unsure5": write_image_bag(root / "unsure5", frames),
        "other": write_image_bag(root / "other", other),
        "multi": make_sample_drive(root / "multi", frames=4, size=SIZE, seed=1, progress=False,
                                   cameras=parse_cameras("front,left"), compressed="jpeg").bag,
    }


@pytest.fixture(scope="module")
def mined(drives: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mined") / "out"
    assert mine("--bag", str(drives["unsure5"]), "--bag", str(drives["other"]), "--top", "4", "--out", str(out),
                "--min-gap-s", "0.1") == 0
    return out


def test_the_frame_the_model_is_unsure_of_ranks_first(mined: Path, drives: dict[str, Path]) -> None:
    table = rows(mined)
    assert table[0]["bag"] == str(drives["unsure5"]) and table[0]["frame_index"] == "5"
    scores = [float(r["score"]) for r in table]
    assert scores == sorted(scores, reverse=True)
    assert scores[0] > 2 * scores[1]


def test_csv_columns_and_rows_describe_each_chosen_frame(mined: Path, drives: dict[str, Path]) -> None:
    table = rows(mined)
    assert list(table[0]) == ["rank", "score", "drive", "bag", "camera", "topic", "frame_index", "stamp_ns", "image",
                              "pseudo_labels"]
    assert [r["rank"] for r in table] == ["1", "2", "3", "4"]
    first = table[0]
    assert first["camera"] == "camera" and first["topic"] == "/camera/image_raw" and first["drive"] == "unsure5"
    assert int(first["stamp_ns"]) == stamp_ns(5, 17.0)
    # 0.1 s apart at 17 Hz: no two chosen frames of one drive are consecutive
    for a in table:
        for b in table:
            if a is not b and a["bag"] == b["bag"]:
                assert abs(int(a["stamp_ns"]) - int(b["stamp_ns"])) >= 0.1e9
    summary = json.loads((mined / "mining.json").read_text())
    assert summary["frames"]["read"] == summary["frames"]["scored"] == 12
    assert summary["chosen"] == 4 and summary["drives_failed"] == 0 and summary["score"] == "least_confidence"


def test_output_is_a_cityscapes_folder_of_the_frames_and_the_models_labels(mined: Path, drives: dict[str, Path]
                                                                           ) -> None:
    table = rows(mined)
    pairs = find_pairs(mined, "train")
    assert [p.stem for p in pairs] == [Path(r["image"]).name.removesuffix("_leftImg8bit.png") for r in table]
    assert pairs[0].stem == "mined_000001_000005"
    with DriveBag(drives["unsure5"], "/camera/image_raw", None) as bag:
        frame5 = next(f for f in bag.frames() if f.index == 5)
    image = cv2.cvtColor(cv2.imread(str(mined / table[0]["image"])), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(image, np.asarray(frame5.image.data).reshape(image.shape))
    labels = cv2.imread(str(mined / table[0]["pseudo_labels"]), cv2.IMREAD_UNCHANGED)
    assert labels.shape == SIZE and labels.dtype == np.uint8
    assert set(np.unique(labels)) <= set(TRAIN_ID_TO_LABEL_ID.values())  # label ids, not train ids
    engine = build_engine(resolve_params(weights=WEIGHTS, device="cpu"))
    expected = train_ids_to_label_ids(engine.infer(image.copy()).labels)
    assert np.mean(labels == expected) > 0.999


def test_train_takes_the_mined_folder(mined: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["train", "--data", str(mined), "--out", str(out), "--iterations", "2", "--batch-size", "2",
                 "--crop", "32x32", "--val-every", "2", "--num-workers", "0", "--device", "cpu",
                 "--init", WEIGHTS, "--no-progress"]) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log if "loss" in r] == [1, 2]
    assert (out / "best.pth").is_file()


def test_contact_sheet_shows_every_chosen_frame(mined: Path) -> None:
    sheet = cv2.imread(str(mined / "contact_sheet.png"))
    th, tw = export.TILE[1] + export.CAPTION_PX, export.TILE[0]
    columns, pad = min(export.MAX_COLUMNS, 4), 4
    assert sheet.shape[:2] == (th + 2 * pad, columns * (tw + pad) + pad)
    tiles = [sheet[pad:pad + th, pad + c * (tw + pad):pad + c * (tw + pad) + tw] for c in range(columns)]
    assert all(t.std() > 10 for t in tiles)
    assert not np.array_equal(tiles[0], tiles[1])


def test_contact_sheet_leaves_unused_cells_empty() -> None:
    tiles = [np.full((export.TILE[1] + export.CAPTION_PX, export.TILE[0], 3), 200, np.uint8)] * 7
    sheet = export.contact_sheet(tiles)
    th, tw, pad = export.TILE[1] + export.CAPTION_PX, export.TILE[0], 4
    cells = [sheet[pad + r * (th + pad):pad + r * (th + pad) + th, pad + c * (tw + pad):pad + c * (tw + pad) + tw]
             for r in range(2) for c in range(export.MAX_COLUMNS)]
    assert [int((cell == 200).all()) for cell in cells] == [1] * 7 + [0] * 5


def test_compressed_multi_camera_drives_and_camera_choice(drives: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "all"
    assert mine("--bag", str(drives["multi"]), "--top", "8", "--out", str(out), "--min-gap-s", "0",
                "--max-similarity", "1") == 0
    table = rows(out)
    assert {r["camera"] for r in table} == {"front", "left"} and len(table) == 8
    assert {r["topic"] for r in table} == {"/front/image_raw/compressed", "/left/image_raw/compressed"}
    out = tmp_path / "left"
    assert mine("--bag", str(drives["multi"]), "--top", "8", "--out", str(out), "--cameras", "left",
                "--min-gap-s", "0", "--max-similarity", "1") == 0
    assert {r["camera"] for r in rows(out)} == {"left"} and len(rows(out)) == 4
    assert mine("--bag", str(drives["multi"]), "--top", "2", "--out", str(tmp_path / "x"), "--cameras", "rear") == 2


def test_cameras_are_found_by_their_images_alone(drives: dict[str, Path]) -> None:
    assert [(c.name, c.image_topic, c.gt_topic) for c in find_cameras(drives["other"], need_gt=False)] == [
        ("camera", "/camera/image_raw", None)]
    with pytest.raises(BagError, match="no camera"):  # evaluation needs ground truth
        find_cameras(drives["other"])
    assert [(c.name, c.image_topic) for c in find_cameras(drives["multi"], need_gt=False)] == [
        ("front", "/front/image_raw/compressed"), ("left", "/left/image_raw/compressed")]
    with DriveBag(drives["other"], "/camera/image_raw", None) as bag:
        frames = list(bag.frames())
    assert [f.index for f in frames] == [0, 1, 2, 3] and all(f.gt is None for f in frames)
    assert select_cameras(drives["other"], None, ("/camera/image_raw", None), need_gt=False) == [
        CameraTopics("camera", "/camera/image_raw", None)]


def test_a_frame_the_node_rejects_is_counted_and_the_rest_mined(tmp_path: Path) -> None:
    bag = write_image_bag(tmp_path / "jpeg", street(5), cameras=("cam",), compressed="jpeg", corrupt=(2,))
    out = tmp_path / "out"
    assert mine("--bag", str(bag), "--top", "5", "--out", str(out), "--min-gap-s", "0", "--max-similarity", "1",
                "--image-topic", "/cam/image_raw/compressed") == 0
    assert sorted(int(r["frame_index"]) for r in rows(out)) == [0, 1, 3, 4]
    frames = json.loads((out / "mining.json").read_text())["frames"]
    assert frames["read"] == 5 and frames["scored"] == 4 and sum(frames["rejected"].values()) == 1


def test_a_broken_drive_is_reported_and_the_others_mined(drives: dict[str, Path], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metadata.yaml").write_text("rosbag2_bagfile_information: {version: 9, garbage")
    out = tmp_path / "out"
    assert mine("--bag", str(drives["other"]), "--bag", str(broken), "--top", "2", "--out", str(out),
                "--min-gap-s", "0") == 1
    assert "drive broken FAILED" in capsys.readouterr().err
    assert len(rows(out)) == 2 and {r["drive"] for r in rows(out)} == {"other"}
    summary = json.loads((out / "mining.json").read_text())
    failed = [d for d in summary["drives"] if d["status"] == "failed"]
    assert summary["drives_failed"] == 1 and failed[0]["name"] == "broken" and "cannot open bag" in failed[0]["reason"]
    # the only drive asked for: its error, nothing written
    assert mine("--bag", str(broken), "--top", "2", "--out", str(tmp_path / "none")) == 2
    assert "cannot open bag" in capsys.readouterr().err
    assert not any((tmp_path / "none").iterdir())


def test_the_output_folder_is_protected(drives: dict[str, Path], mined: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert mine("--bag", str(drives["other"]), "--top", "1", "--out", str(busy)) == 2
    assert "not empty" in capsys.readouterr().err and (busy / "notes.txt").exists()
    again = tmp_path / "again"
    assert mine("--bag", str(drives["other"]), "--top", "3", "--out", str(again), "--min-gap-s", "0") == 0
    assert mine("--bag", str(drives["other"]), "--top", "1", "--out", str(again)) == 2
    assert "--overwrite" in capsys.readouterr().err and len(rows(again)) == 3
    assert mine("--bag", str(drives["other"]), "--top", "1", "--out", str(again), "--overwrite") == 0
    assert len(rows(again)) == 1 and len(find_pairs(again, "train")) == 1


def test_an_untrained_model_is_refused(drives: dict[str, Path], tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["mine", "--bag", str(drives["other"]), "--top", "1", "--out", str(tmp_path / "o"), "--device", "cpu",
                 "--no-progress"]) == 2
    assert "trained model" in capsys.readouterr().err


# -- shifted domains of the sample drive ----------------------------------------------------------------
def test_styles_shift_the_image_deterministically_and_keep_the_labels() -> None:
    clear = list(render_drive(3, 48, 96, seed=4))
    images = {}
    for style in STYLES:
        once = list(render_drive(3, 48, 96, seed=4, style=style))
        again = list(render_drive(3, 48, 96, seed=4, style=style))
        for (a, la), (b, _), (c, lc) in zip(once, again, clear, strict=True):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(la, lc)
            assert np.abs(a.astype(int) - c.astype(int)).mean() > 8
        images[style] = once[0][0]
    assert images["dusk"][..., 0].mean() > images["dusk"][..., 2].mean() + 10  # warm light
    assert images["fog"].std() < clear[0][0].std()  # contrast lost in the haze
    assert not np.array_equal(images["rain"], images["fog"])
    with pytest.raises(ValueError, match="style must be one of"):
        next(render_drive(1, 48, 96, style="snow"))


def test_make_sample_drive_style_option(tmp_path: Path) -> None:
    assert main(["make-sample-drive", str(tmp_path / "fog"), "--frames", "2", "--size", "48x96", "--style", "fog"]) == 0
    assert "style=fog" in (tmp_path / "fog" / ".sample_drive").read_text()
    with DriveBag(tmp_path / "fog" / "bag") as bag:
        frames = list(bag.frames())
    rendered = list(render_drive(2, 48, 96, seed=0, style="fog"))
    np.testing.assert_array_equal(np.asarray(frames[1].image.data).reshape(48, 96, 3), rendered[1][0])
