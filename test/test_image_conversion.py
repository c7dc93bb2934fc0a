"""Image conversion: every malformed message is rejected with its reason, every valid one is
converted exactly, and the size limit is enforced before the payload is touched."""

from __future__ import annotations

import array

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_support import LAYOUTS, Fields, decode_pixel, expected_reason, image_fields

from seg_perception.image_conversion import (
    DEFAULT_MAX_PIXELS,
    REJECT_REASONS,
    SUPPORTED_ENCODINGS,
    ImageRejected,
    check_image,
    image_msg_to_rgb,
    image_to_rgb,
)

FUZZ = settings(max_examples=3000, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _convert(f: Fields, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    return image_to_rgb(f.encoding, f.height, f.width, f.step, f.data, f.is_bigendian, max_pixels)


def test_supported_encodings_match_the_documented_table() -> None:
    assert SUPPORTED_ENCODINGS == LAYOUTS


@FUZZ
@given(image_fields(), st.sampled_from([DEFAULT_MAX_PIXELS, 64, 1]))
def test_any_message_is_converted_exactly_or_rejected_with_its_reason(f: Fields, max_pixels: int) -> None:
    expected = expected_reason(f, max_pixels)
    try:
        rgb = _convert(f, max_pixels)
    except ImageRejected as exc:  # any other exception fails the test
        assert exc.reason == expected, str(exc)
        assert exc.reason in REJECT_REASONS
        return
    assert expected is None
    assert rgb.shape == (f.height, f.width, 3) and rgb.dtype == np.uint8
    decoded = np.array([[decode_pixel(f, r, c) for c in range(f.width)] for r in range(f.height)],
                       dtype=np.uint8)
    np.testing.assert_array_equal(rgb, decoded)


@pytest.mark.parametrize("encoding", [e for e in sorted(LAYOUTS) if e.endswith("16")])
def test_sixteen_bit_encodings_honour_the_byte_order(encoding: str) -> None:
    channels, _ = LAYOUTS[encoding]
    values = np.arange(2 * 3 * channels, dtype=np.uint16).reshape(2, 3, channels) * 2000
    for byte_order, flag in (("<", 0), (">", 1)):
        data = values.astype(byte_order + "u2").tobytes()
        rgb = image_to_rgb(encoding, 2, 3, 3 * channels * 2, data, flag)
        high = (values >> 8).astype(np.uint8)
        expected = {"mono16": np.repeat(high, 3, 2), "rgb16": high, "rgba16": high[..., :3],
                    "bgr16": high[..., ::-1], "bgra16": high[..., 2::-1]}[encoding]
        np.testing.assert_array_equal(rgb, expected)


def test_rgb8_is_a_zero_copy_view_even_with_padded_rows() -> None:
    payload = bytearray(range(2 * 8))  # 2 rows of 2 pixels, step 8 (2 bytes of padding)
    rgb = image_to_rgb("rgb8", 2, 2, 8, payload)
    assert np.shares_memory(rgb, np.frombuffer(payload, np.uint8))
    assert rgb[1, 1].tolist() == [11, 12, 13]


class _Untouchable:
    """A payload that fails the test if anything reads it."""

    def __buffer__(self, flags: int) -> memoryview:
        raise AssertionError("payload was touched")

    def __len__(self) -> int:
        raise AssertionError("payload length was read")


@pytest.mark.parametrize(
    ("encoding", "height", "width", "step", "reason"),
    [
        ("rgb8", 2**32 - 1, 2**32 - 1, 3, "too_large"),
        ("rgb8", 4097, 4096, 3 * 4096, "too_large"),
        ("yuv422", 1, 1, 2, "encoding"),
        ("rgb8", 0, 5, 15, "zero_size"),
        ("rgb8", 2, 5, 14, "step"),
    ],
)
def test_header_problems_are_found_before_the_payload_is_read(
    encoding: str, height: int, width: int, step: int, reason: str
) -> None:
    with pytest.raises(ImageRejected) as info:
        check_image(encoding, height, width, step, _Untouchable())
    assert info.value.reason == reason


def test_max_pixels_limit_is_inclusive() -> None:
    data = bytes(4 * 4 * 3)
    assert image_to_rgb("rgb8", 4, 4, 12, data, max_pixels=16).shape == (4, 4, 3)
    with pytest.raises(ImageRejected, match="max_pixels=15") as info:
        image_to_rgb("rgb8", 4, 4, 12, data, max_pixels=15)
    assert info.value.reason == "too_large"


def test_non_string_encoding_is_rejected_not_crashed() -> None:
    with pytest.raises(ImageRejected) as info:
        check_image(["rgb8"], 1, 1, 3, bytes(3))  # type: ignore[arg-type]
    assert info.value.reason == "encoding"


def test_ros_message_payload_types_are_accepted() -> None:
    class Msg:
        encoding, height, width, step, is_bigendian = "bgr8", 1, 2, 6, 0
        data = array.array("B", [1, 2, 3, 4, 5, 6])

    assert image_msg_to_rgb(Msg()).tolist() == [[[3, 2, 1], [6, 5, 4]]]
    Msg.data = [1, 2, 3, 4, 5, 6]  # type: ignore[assignment]
    assert image_msg_to_rgb(Msg()).tolist() == [[[3, 2, 1], [6, 5, 4]]]
