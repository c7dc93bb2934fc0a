"""Bad input through the real subscription path: 10,000+ generated messages are published over
DDS to a running seg_node. The node must not crash, must count each rejected frame under the
reason the documented check order gives, must account for every frame, and must still segment a
valid frame afterwards."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from rclpy.parameter import Parameter
from reliability_support import Fields, NodeHarness, expected_reason, image_fields, image_msg

from seg_perception.image_conversion import DEFAULT_MAX_PIXELS

pytestmark = pytest.mark.ros

MESSAGES = 10_000
BATCH = 500  # wait for the node to catch up every BATCH messages, so DDS never drops any


@pytest.fixture(scope="module")
def harness():
    with NodeHarness() as h:
        yield h


def test_ten_thousand_generated_messages_are_all_accounted_for(harness: NodeHarness) -> None:
    sent: list[str | None] = []

    @settings(max_examples=MESSAGES, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(image_fields())
    def publish(f: Fields) -> None:
        harness.publisher.publish(f.to_msg(frame_id=f"fuzz{len(sent)}"))
        sent.append(expected_reason(f, DEFAULT_MAX_PIXELS))
        if len(sent) % BATCH == 0:
            harness.wait_received(len(sent))

    started = time.monotonic()
    publish()
    harness.wait_received(len(sent))
    books = harness.wait_settled()
    elapsed = time.monotonic() - started

    expected = Counter(r for r in sent if r is not None)
    valid = sent.count(None)
    print(f"\n{len(sent)} messages in {elapsed:.1f} s; rejected {dict(expected)}; valid {valid}; books {books}")
    assert len(sent) >= MESSAGES
    assert books["received"] == len(sent)
    assert books["rejected"] == dict(expected)  # each reason counted exactly, nothing "malformed"
    assert books["processed"] + books["dropped_total"] == valid
    assert set(books["dropped"]) <= {"superseded"}
    assert books["processed"] > 0 and len(expected) == 6

    diagnostic = harness.next_diagnostic()
    for reason, count in expected.items():
        assert diagnostic.values[f"rejected_{reason}"] == str(count)
    assert diagnostic.values["frames_rejected_total"] == str(sum(expected.values()))

    processed_before = books["processed"]
    harness.publisher.publish(image_msg(np.full((24, 40, 3), 7, np.uint8), frame_id="after_fuzz"))
    harness.wait_labels("after_fuzz")
    assert harness.node.scheduler.accounting.processed == processed_before + 1
    assert harness.node.scheduler.running


def test_max_pixels_rejects_larger_frames_and_is_settable_at_runtime(harness: NodeHarness) -> None:
    before = harness.wait_settled()["rejected"].get("too_large", 0)
    result = harness.node.set_parameters([Parameter("max_pixels", value=32 * 32)])[0]
    assert result.successful
    harness.publisher.publish(image_msg(np.zeros((32, 33, 3), np.uint8), frame_id="too_big"))
    harness.publisher.publish(image_msg(np.zeros((32, 32, 3), np.uint8), frame_id="just_fits"))
    harness.wait_labels("just_fits")
    assert harness.node.scheduler.accounting.snapshot()["rejected"]["too_large"] == before + 1
    assert not any(r.frame_id == "too_big" for r in list(harness.labels))
    refused = harness.node.set_parameters([Parameter("max_pixels", value=-5)])[0]
    assert not refused.successful and "max_pixels" in refused.reason
    assert harness.node.values["max_pixels"] == 32 * 32
