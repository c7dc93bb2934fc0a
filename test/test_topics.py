"""Camera topic checks without ROS: two cameras on one subscribed topic, and a camera reading
the node's own output, are refused with one line each before anything is built."""

from __future__ import annotations

import pytest

from seg_perception import params as P
from seg_perception.topics import CameraTopics, output_topic, subscribed_topic, topic_problems


def _config(**values) -> dict:
    return {**P.defaults(), "device": "cpu", "precision": "fp32", **values}


def test_subscribed_and_output_topics() -> None:
    assert subscribed_topic("/x", "raw") == "/x"
    assert subscribed_topic("/x/", "compressed") == "/x/compressed"
    assert output_topic("", "labels") == "segmentation/labels"
    assert output_topic("front", "confidence") == "front/segmentation/confidence"


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"cameras": ["a", "b"], "a": {"image_topic": "/x", "image_transport": "compressed"},
          "b": {"image_topic": "/x/compressed"}}, "cameras a, b all read /x/compressed"),
        ({"cameras": ["a", "b"], "a": {"image_topic": "/x"}, "b": {"image_topic": "/x"}}, "cameras a, b all read /x"),
        ({"cameras": ["a"], "a": {"image_topic": "a/segmentation/labels"}},
         "camera 'a' reads a/segmentation/labels, which this node publishes"),
        ({"cameras": ["a", "b"], "b": {"image_topic": "a/segmentation/overlay"}}, "camera 'b' reads a/segmentation"),
        ({"image_topic": "segmentation/confidence"}, "the camera reads segmentation/confidence"),
        ({"image_topic": "/diagnostics"}, "the camera reads /diagnostics"),
    ],
)
def test_clashing_topics_are_one_line_problems(values: dict, expected: str) -> None:
    problems = P.validate_config(_config(**values))
    assert len(problems) == 1 and expected in problems[0] and "\n" not in problems[0]


@pytest.mark.parametrize(
    "values",
    [
        {"cameras": ["a", "b"], "a": {"image_topic": "/x", "image_transport": "compressed"},
         "b": {"image_topic": "/x"}},  # /x/compressed and /x: two different topics
        {"image_topic": "segmentation/labels", "image_transport": "compressed"},  # .../labels/compressed
        {"cameras": ["a"]},
        {},
    ],
)
def test_distinct_topics_are_fine(values: dict) -> None:
    assert P.validate_config(_config(**values)) == []


def test_topics_are_compared_as_the_node_resolves_them() -> None:
    topics = {"a": CameraTopics("/ns/in", "/ns/in"), "b": CameraTopics("/ns/b/segmentation/labels",
                                                                       "/ns/b/segmentation/labels")}
    problems = topic_problems(topics, resolve=lambda topic: f"/ns/{topic}")
    assert len(problems) == 1 and "camera 'b' reads /ns/b/segmentation/labels" in problems[0]


def test_a_section_for_a_camera_not_in_cameras_says_so() -> None:
    problems = P.validate_config(_config(cameras=["a"], b={"image_topic": "/b"}))
    assert problems == ["camera 'b' is not in cameras: its parameters are ignored"]
    message = P.unknown_parameter_message("frnt.image_topic", ["image_topic", "model"], ("front", "rear"))
    assert "camera 'frnt' is not in cameras (cameras: front, rear); did you mean 'front'?" in message
    assert "did you mean 'image_topic'" not in message
    single = P.unknown_parameter_message("b.image_topic", ["image_topic"], ())
    assert "camera 'b' is not in cameras (cameras: none)" in single
    assert P.unknown_parameter_message("devise", ["device"], ("front",)).endswith("did you mean 'device'?")
