"""The node's topic names and the checks of a camera configuration's topics, without ROS.

Each camera subscribes to one topic: its ``image_topic`` for raw frames, or
``<image_topic>/compressed`` for a compressed camera (where image_transport's compressed plugin
publishes). Each camera publishes ``[<camera>/]segmentation/{labels,color,overlay,confidence}``
and the node ``/diagnostics``. Two configurations are refused at startup, before a model is built:

* two cameras that subscribe to one topic (each would get the other's frames; with a raw and a
  compressed camera the two message types would clash inside DDS);
* a camera that subscribes to one of the node's own outputs: every labels image would come back
  as a frame and be segmented again, forever.

Names are compared as the node resolves them (namespace, ``~``, remapping) when a resolver is
given, else as written.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .text import bounded_repr

#: The images each camera publishes, under ``[<camera>/]segmentation/``.
OUTPUTS = ("labels", "color", "overlay", "confidence")
DIAGNOSTICS_TOPIC = "/diagnostics"

#: Turns a topic name into the name the node would use (namespace, remapping); raises
#: ``ValueError`` for a name that is not valid.
Resolver = Callable[[str], str]


def output_topic(camera: str, output: str) -> str:
    """The (relative) topic of one of ``camera``'s outputs; the single camera has no prefix."""
    return f"{camera}/segmentation/{output}" if camera else f"segmentation/{output}"


def subscribed_topic(image_topic: str, transport: str) -> str:
    """The topic a camera actually subscribes to, given its (resolved) image topic and transport."""
    return f"{image_topic.rstrip('/')}/compressed" if transport == "compressed" else image_topic


@dataclass(frozen=True)
class CameraTopics:
    """One camera's resolved topics: its image topic and the topic it subscribes to."""

    image_topic: str
    subscribed: str


def _where(camera: str) -> str:
    return f"{camera}.image_topic" if camera else "image_topic"


def camera_topics(cameras: Sequence[str], setting: Callable[[str, str], Any],
                  resolve: Resolver = lambda topic: topic) -> tuple[dict[str, CameraTopics], list[str]]:
    """Each camera's topics (``setting(camera, name)``: the camera's effective parameter value)
    and the problems of those that cannot be resolved."""
    topics: dict[str, CameraTopics] = {}
    problems: list[str] = []
    for camera in cameras:
        topic = setting(camera, "image_topic")
        try:
            resolved = resolve(topic)
        except ValueError as exc:
            problems.append(f"{_where(camera)} {bounded_repr(topic, 40)} is not a valid topic name ({str(exc)[:120]})")
            continue
        topics[camera] = CameraTopics(resolved, subscribed_topic(resolved, setting(camera, "image_transport")))
    return topics, problems


def topic_problems(topics: Mapping[str, CameraTopics], resolve: Resolver = lambda topic: topic) -> list[str]:
    """Cameras that subscribe to one topic, and cameras that subscribe to the node's outputs."""
    owners: dict[str, list[str]] = {}
    for camera, camera_topic in topics.items():
        owners.setdefault(camera_topic.subscribed, []).append(camera)
    problems = [f"cameras {', '.join(cams)} all read {topic}; each camera needs its own image_topic"
                for topic, cams in owners.items() if len(cams) > 1]
    outputs = {DIAGNOSTICS_TOPIC: DIAGNOSTICS_TOPIC}
    for camera in topics:
        for output in OUTPUTS:
            try:
                outputs[resolve(output_topic(camera, output))] = output_topic(camera, output)
            except ValueError:  # the camera's name is checked elsewhere
                continue
    for camera, camera_topic in topics.items():
        if camera_topic.subscribed in outputs:
            who = f"camera {camera!r}" if camera else "the camera"
            problems.append(f"{who} reads {camera_topic.subscribed}, which this node publishes "
                            f"({outputs[camera_topic.subscribed]}): it would segment its own output forever; "
                            f"set {_where(camera)} to a camera's topic")
    return problems
