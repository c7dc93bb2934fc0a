"""Drive bags: Cityscapes folder -> bag round trip, the sample drive, and bad bags."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from rosbags.rosbag2 import Writer

from seg_perception.evaluation.bag_io import (
    GT_TOPIC,
    IMAGE_TOPIC,
    IMAGE_TYPE,
    TYPESTORE,
    BagError,
    DriveBag,
    image_message,
)
from seg_perception.evaluation.cityscapes_folder import DEFAULT_START_NS, cityscapes_to_bag, find_pairs, write_pair
from seg_perception.evaluation.sample_drive import (
    BUILDING,
    CAR,
    PERSON,
    POLE,
    ROAD,
    SIDEWALK,
    SKY,
    TRAFFIC_SIGN,
    VEGETATION,
    Camera,
    Renderer,
    Thing,
    World,
    make_sample_drive,
    render_drive,
)


@pytest.fixture(scope="module")
def drive(tmp_path_factory: pytest.TempPathFactory):
    return make_sample_drive(tmp_path_factory.mktemp("eval_bag") / "drive", frames=6, size=(48, 96),
                             seed=3, progress=False)


def write_bag(path: Path, messages: list[tuple[str, int, object]], topics=(IMAGE_TOPIC, GT_TOPIC)) -> Path:
    """A bag with arbitrary Image messages: (topic, log time ns, message)."""
    with Writer(path, version=9) as writer:
        conns = {t: writer.add_connection(t, IMAGE_TYPE, typestore=TYPESTORE) for t in topics}
        for topic, t, msg in messages:
            writer.write(conns[topic], t, TYPESTORE.serialize_cdr(msg, IMAGE_TYPE))
    return path


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_cityscapes_folder_round_trip(drive, tmp_path: Path, storage: str) -> None:
    bag = tmp_path / "bag"
    count = cityscapes_to_bag(drive.cityscapes, "val", bag, storage=storage, rate_hz=10.0, frame_id="cam0",
                              progress=False)
    pairs = find_pairs(drive.cityscapes, "val")
    assert count == len(pairs) == 6
    with DriveBag(bag) as reader:
        assert reader.info.storage == storage
        assert reader.info.image_count == reader.info.gt_count == 6
        frames = list(reader.frames())
    stamps = [f.stamp_ns for f in frames]
    assert stamps[0] == DEFAULT_START_NS
    assert np.all(np.diff(stamps) == 100_000_000)  # 10 Hz, strictly increasing
    for frame, pair in zip(frames, pairs, strict=False):
        rgb = cv2.cvtColor(cv2.imread(str(pair.image)), cv2.COLOR_BGR2RGB)
        gt = cv2.imread(str(pair.gt), cv2.IMREAD_UNCHANGED)
        assert frame.frame_id == "cam0"
        assert frame.image.encoding == "rgb8"
        assert frame.gt_problem is None
        np.testing.assert_array_equal(np.asarray(frame.image.data).reshape(rgb.shape), rgb)
        np.testing.assert_array_equal(frame.gt, gt)


def test_the_bag_of_the_sample_drive_equals_its_folder(drive) -> None:
    with DriveBag(drive.bag) as reader:
        frames = list(reader.frames())
    rendered = list(render_drive(6, 48, 96, seed=3))
    assert len(frames) == len(rendered)
    for frame, (rgb, gt) in zip(frames, rendered, strict=False):
        np.testing.assert_array_equal(np.asarray(frame.image.data).reshape(rgb.shape), rgb)
        np.testing.assert_array_equal(frame.gt, gt)


def test_sample_drive_is_deterministic_and_moves() -> None:
    first = list(render_drive(12, 128, 256, seed=1))
    again = list(render_drive(12, 128, 256, seed=1))
    other = list(render_drive(12, 128, 256, seed=2))
    for (a_rgb, a_gt), (b_rgb, b_gt) in zip(first, again, strict=False):
        np.testing.assert_array_equal(a_rgb, b_rgb)
        np.testing.assert_array_equal(a_gt, b_gt)
    assert any(not np.array_equal(a[1], b[1]) for a, b in zip(first, other, strict=False))
    for (a_rgb, a_gt), (b_rgb, b_gt) in zip(render_drive(4, 128, 256, seed=1), first, strict=False):  # a prefix
        np.testing.assert_array_equal(a_rgb, b_rgb)
        np.testing.assert_array_equal(a_gt, b_gt)
    present = set(np.unique(np.stack([gt for _, gt in first])))
    assert {ROAD, SIDEWALK, BUILDING, VEGETATION, SKY, POLE, TRAFFIC_SIGN, CAR, PERSON} <= present
    # The camera moves: consecutive label maps differ.
    changed = [np.mean(a[1] != b[1]) for a, b in zip(first, first[1:], strict=False)]
    assert min(changed) > 0.005


def test_static_objects_grow_and_move_outwards_as_the_camera_approaches() -> None:
    camera = Camera(128, 256)
    world = World(seed=0, length=40.0)
    world.things = [Thing(TRAFFIC_SIGN, x=5.0, z=20.0, width=0.8, height=0.8, color=(0, 0, 200), y0=2.0)]
    renderer = Renderer(world, camera, seed=0)
    areas, columns = [], []
    for frame in range(0, 15, 2):
        labels = renderer.render(frame)[1]
        ys, xs = np.nonzero(labels == TRAFFIC_SIGN)
        areas.append(xs.size)
        columns.append(xs.mean())
    assert all(b > a for a, b in zip(areas, areas[1:], strict=False)), areas
    assert all(b > a for a, b in zip(columns, columns[1:], strict=False)), columns  # right of the camera: moves right


def test_missing_topic_names_the_topics_the_bag_has(tmp_path: Path) -> None:
    rgb = np.zeros((4, 6, 3), np.uint8)
    bag = write_bag(tmp_path / "bag", [(IMAGE_TOPIC, 1, image_message(1, "c", rgb, "rgb8"))], topics=(IMAGE_TOPIC,))
    with pytest.raises(BagError, match=r"no ground-truth topic '/camera/semantic_gt'.*/camera/image_raw"):
        DriveBag(bag)
    with pytest.raises(BagError, match=r"no image topic '/front/image'.*/camera/image_raw \(sensor_msgs/msg/Image, 1"):
        DriveBag(bag, image_topic="/front/image")


def test_missing_bag_and_not_a_bag(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        DriveBag(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BagError, match="cannot open bag"):
        DriveBag(tmp_path / "empty")


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_truncated_bag_is_a_clear_error(drive, tmp_path: Path, storage: str) -> None:
    bag = tmp_path / "bag"
    cityscapes_to_bag(drive.cityscapes, "val", bag, storage=storage, progress=False)
    data = next(p for p in bag.iterdir() if p.name != "metadata.yaml")
    with open(data, "r+b") as f:
        f.truncate(data.stat().st_size // 2)
    with pytest.raises(BagError, match="truncated or corrupt|cannot open bag"):
        with DriveBag(bag) as reader:
            list(reader.frames())


def test_per_frame_ground_truth_problems_are_reported(tmp_path: Path) -> None:
    rgb = np.full((4, 6, 3), 9, np.uint8)
    ok, wrong_size, wrong_encoding = (np.full((4, 6), 7, np.uint8), np.full((3, 6), 7, np.uint8),
                                      np.full((4, 6, 3), 7, np.uint8))
    messages = [
        (IMAGE_TOPIC, 10, image_message(10, "c", rgb, "rgb8")), (GT_TOPIC, 10, image_message(10, "c", ok, "mono8")),
        (IMAGE_TOPIC, 20, image_message(20, "c", rgb, "rgb8")),  # no ground truth
        (IMAGE_TOPIC, 30, image_message(30, "c", rgb, "rgb8")),
        (GT_TOPIC, 30, image_message(30, "c", wrong_size, "mono8")),
        (IMAGE_TOPIC, 40, image_message(40, "c", rgb, "rgb8")),
        (GT_TOPIC, 40, image_message(40, "c", wrong_encoding, "rgb8")),
        (GT_TOPIC, 50, image_message(50, "c", ok, "mono8")),  # no image
    ]
    with DriveBag(write_bag(tmp_path / "bag", messages)) as reader:
        frames = list(reader.frames())
        pairing = reader.pairing
    assert [f.index for f in frames] == [0, 1, 2, 3]
    assert [f.stamp_ns for f in frames] == [10, 20, 30, 40]
    assert [f.gt_problem for f in frames] == [None, "missing_ground_truth", "gt_size_mismatch", "gt_encoding"]
    np.testing.assert_array_equal(frames[0].gt, ok)
    assert all(f.gt is None for f in frames[1:])
    assert pairing.gt_without_image == 1


def test_ground_truth_recorded_before_its_image_still_pairs(tmp_path: Path) -> None:
    rgb = np.zeros((2, 2, 3), np.uint8)
    gt = np.full((2, 2), 26, np.uint8)
    messages = [(GT_TOPIC, 5, image_message(100, "c", gt, "mono8")),
                (IMAGE_TOPIC, 6, image_message(100, "c", rgb, "rgb8"))]
    with DriveBag(write_bag(tmp_path / "bag", messages)) as reader:
        (frame,) = list(reader.frames())
    assert frame.stamp_ns == 100 and frame.gt_problem is None


def test_converter_errors(tmp_path: Path) -> None:
    root = tmp_path / "cs"
    with pytest.raises(FileNotFoundError, match="no Cityscapes images"):
        find_pairs(root, "val")
    write_pair(root, "val", "bonn", "bonn_000000_000001", np.zeros((4, 6, 3), np.uint8), np.zeros((4, 6), np.uint8))
    with pytest.raises(FileNotFoundError, match="cities not in .*available: bonn"):
        find_pairs(root, "val", ["ulm"])
    (root / "gtFine/val/bonn/bonn_000000_000001_gtFine_labelIds.png").unlink()
    with pytest.raises(FileNotFoundError, match="ground truth missing"):
        find_pairs(root, "val")
    cv2.imwrite(str(root / "gtFine/val/bonn/bonn_000000_000001_gtFine_labelIds.png"), np.zeros((5, 6), np.uint8))
    with pytest.raises(ValueError, match="is 6x5 but its image is 6x4"):
        cityscapes_to_bag(root, "val", tmp_path / "bag", progress=False)
    assert not (tmp_path / "bag").exists()  # no half-written bag left behind


def test_images_sharing_a_stamp_pair_in_order_with_their_ground_truths(tmp_path: Path) -> None:
    rgb = [np.full((2, 3, 3), v, np.uint8) for v in (1, 2)]
    gt = [np.full((2, 3), v, np.uint8) for v in (7, 26)]
    # both images first, then both ground truths: a stamp-only pairing gives image 2 ground truth 1
    messages = [(IMAGE_TOPIC, 1, image_message(100, "c", rgb[0], "rgb8")),
                (IMAGE_TOPIC, 2, image_message(100, "c", rgb[1], "rgb8")),
                (GT_TOPIC, 3, image_message(100, "c", gt[0], "mono8")),
                (GT_TOPIC, 4, image_message(100, "c", gt[1], "mono8"))]
    with DriveBag(write_bag(tmp_path / "bag", messages)) as reader:
        frames = list(reader.frames())
        assert reader.pairing.gt_without_image == 0 and reader.ambiguous_stamps == set()
    assert [int(np.asarray(f.image.data)[0]) for f in frames] == [1, 2]
    assert [int(f.gt[0, 0]) for f in frames] == [7, 26]


def test_unequal_images_and_ground_truths_at_one_stamp_are_not_guessed(tmp_path: Path) -> None:
    rgb, gt = np.zeros((2, 3, 3), np.uint8), np.full((2, 3), 7, np.uint8)
    messages = [(IMAGE_TOPIC, 1, image_message(100, "c", rgb, "rgb8")),
                (IMAGE_TOPIC, 2, image_message(100, "c", rgb, "rgb8")),
                (GT_TOPIC, 3, image_message(100, "c", gt, "mono8")),
                (IMAGE_TOPIC, 4, image_message(200, "c", rgb, "rgb8")),
                (GT_TOPIC, 5, image_message(200, "c", gt, "mono8"))]
    with DriveBag(write_bag(tmp_path / "bag", messages)) as reader:
        frames = list(reader.frames())
        notes = reader.pairing.notes
    assert [(f.stamp_ns, f.gt_problem) for f in frames] == [(100, "ambiguous_stamp"), (100, "ambiguous_stamp"),
                                                            (200, None)]
    assert any("unequal numbers of images and ground truths" in n and "stamp 100: 2 images, 1" in n for n in notes)


def test_metadata_that_under_counts_messages_is_noted(drive, tmp_path: Path) -> None:
    import shutil

    import yaml

    bag = tmp_path / "bag"
    shutil.copytree(drive.bag, bag)
    meta_path = bag / "metadata.yaml"
    meta = yaml.safe_load(meta_path.read_text())
    for topic in meta["rosbag2_bagfile_information"]["topics_with_message_count"]:
        if topic["topic_metadata"]["name"] == IMAGE_TOPIC:
            topic["message_count"] = 2
    meta_path.write_text(yaml.safe_dump(meta))
    with DriveBag(bag) as reader:
        frames = list(reader.frames())
        notes = reader.pairing.notes
    assert len(frames) == 6
    assert any("metadata lists 2 messages" in n and "holds 6" in n for n in notes)


def test_frame_whose_ground_truth_is_all_ignored_is_not_counted_as_evaluated(tmp_path: Path) -> None:
    from seg_perception.evaluation.bag_io import BagFrame
    from seg_perception.evaluation.ledger import Ledger

    ledger = Ledger(total_frames=2)
    labels = np.zeros((2, 3), np.uint8)
    image = image_message(1, "c", np.zeros((2, 3, 3), np.uint8), "rgb8")
    unlabeled = BagFrame(0, 1, "c", image, np.zeros((2, 3), np.uint8))  # label id 0: ignored
    road = BagFrame(1, 2, "c", image, np.full((2, 3), 7, np.uint8))  # label id 7: road
    assert ledger.result(unlabeled, labels, 1.0, 0.0).reason == "gt_no_valid_pixel"
    assert ledger.result(road, labels, 1.0, 0.0).pixel_accuracy == 1.0
    assert ledger.counts()["evaluated"] == 1 and ledger.counts()["not_evaluated"] == 1
    assert int(ledger.confusion.matrix.sum()) == 6
