"""Compressed image decoding: formats, header-only size checks, CPU decoders, nvJPEG path (mocked)."""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seg_perception import compressed as C
from seg_perception.image_conversion import ImageRejected


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    # smooth content, so JPEG is close to the source
    y, x = np.mgrid[0:48, 0:64]
    return np.dstack([x * 4, y * 5, (x + y) * 2]).astype(np.uint8)


def _jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    return cv2.imencode(".jpg", image[:, :, ::-1] if image.ndim == 3 else image,
                        [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def _png(bgr_or_mono: np.ndarray) -> bytes:
    return cv2.imencode(".png", bgr_or_mono)[1].tobytes()


def _with_jpeg_size(data: bytes, height: int, width: int) -> bytes:
    """The same JPEG with its frame header claiming another size."""
    sof = data.index(b"\xff\xc0")
    return data[:sof + 5] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + data[sof + 9:]


@pytest.mark.parametrize(
    ("fmt", "codec", "source", "encoded"),
    [
        ("rgb8; jpeg compressed bgr8", "jpeg", "rgb8", "bgr8"),
        ("mono16; png compressed mono16", "png", "mono16", "mono16"),
        ("jpeg", "jpeg", "", ""),
        ("PNG", "png", "", ""),
        ("jpg", "jpeg", "", ""),
    ],
)
def test_image_transport_formats_parse(fmt: str, codec: str, source: str, encoded: str) -> None:
    assert C.parse_format(fmt) == C.CompressedFormat(codec, source, encoded)


@pytest.mark.parametrize("fmt", ["", "tiff", "16UC1; compressedDepth png", "rgb8; jpeg squashed bgr8", "x" * 10_000])
def test_unknown_formats_are_rejected_with_a_bounded_message(fmt: str) -> None:
    with pytest.raises(ImageRejected) as info:
        C.parse_format(fmt)
    assert info.value.reason == "format" and len(str(info.value)) < 300


def test_jpeg_decodes_to_rgb_close_to_the_source(rgb: np.ndarray) -> None:
    out = C.decode_to_rgb("rgb8; jpeg compressed bgr8", _jpeg(rgb))
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - rgb).mean() < 3.0  # colours not swapped: a swap is ~60 off


def test_every_available_cpu_decoder_agrees(rgb: np.ndarray) -> None:
    data = memoryview(_jpeg(rgb))
    outputs = {name: decode(data) for name, decode in C.available_jpeg_decoders().items()}
    assert "simplejpeg" in outputs and "opencv" in outputs
    for name, out in outputs.items():
        assert out.shape == rgb.shape, name
        assert np.abs(out.astype(int) - outputs["opencv"]).max() <= 2, name


def test_mono_jpeg_becomes_grey_rgb(rgb: np.ndarray) -> None:
    out = C.decode_to_rgb("mono8; jpeg compressed mono8", _jpeg(rgb[:, :, 0]))
    assert out.shape == rgb.shape
    assert (out[:, :, 0] == out[:, :, 1]).all() and (out[:, :, 1] == out[:, :, 2]).all()


def test_png_8_and_16_bit_decode_exactly(rgb: np.ndarray) -> None:
    assert (C.decode_to_rgb("bgr8; png compressed bgr8", _png(rgb[:, :, ::-1])) == rgb).all()
    deep = rgb[:, :, ::-1].astype(np.uint16) * 256 + 7  # low byte is noise, as for raw 16-bit
    assert (C.decode_to_rgb("bgr16; png compressed bgr16", _png(deep)) == rgb).all()
    mono = C.decode_to_rgb("png", _png(rgb[:, :, 0].astype(np.uint16) * 256))
    assert (mono == rgb[:, :, :1]).all()
    with_alpha = _png(np.dstack([rgb[:, :, ::-1], rgb[:, :, 0]]))
    assert (C.decode_to_rgb("png", with_alpha) == rgb).all()


def test_size_comes_from_the_header_and_oversize_is_never_decoded(
    rgb: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _jpeg(rgb)
    assert C.probe(data) == C.ImageInfo("jpeg", 48, 64, 3, 8)
    assert C.probe(_png(rgb)) == C.ImageInfo("png", 48, 64, 3, 8)

    def explode(_view: memoryview) -> np.ndarray:
        raise AssertionError("decoder called for an oversized image")

    monkeypatch.setattr(C, "_jpeg_decoder", ("boom", explode))
    bomb = _with_jpeg_size(data, 65535, 65535)
    with pytest.raises(ImageRejected) as info:
        C.decode_to_rgb("jpeg", bomb)
    assert info.value.reason == "too_large"
    with pytest.raises(ImageRejected, match="exceeds max_pixels=100") as info:
        C.decode_to_rgb("jpeg", data, max_pixels=100)
    assert info.value.reason == "too_large"


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda j, p: j[: len(j) // 2], "corrupt"),                      # truncated JPEG
        (lambda j, p: p[: len(p) - 20], "corrupt"),                      # truncated PNG
        (lambda j, p: b"", "corrupt"),
        (lambda j, p: b"GIF89a" + bytes(100), "corrupt"),               # garbage
        (lambda j, p: j[:2] + b"\xff\xda" + bytes(50) + b"\xff\xd9", "corrupt"),  # no frame header
        (lambda j, p: _with_jpeg_size(j, 0, 64), "zero_size"),
        (lambda j, p: j[:600] + bytes(range(256)) * 4 + b"\xff\xd9", "decode"),  # corrupt entropy data
    ],
    ids=["truncated_jpeg", "truncated_png", "empty", "garbage", "no_sof", "zero_height", "corrupt_scan"],
)
def test_bad_payloads_are_rejected_with_a_reason(
    rgb: np.ndarray, make: Callable[[bytes, bytes], bytes], reason: str
) -> None:
    data = make(_jpeg(rgb), _png(rgb))
    fmt = "png" if data[:4] == b"\x89PNG" else "jpeg"
    with pytest.raises(ImageRejected) as info:
        C.decode_to_rgb(fmt, data)
    assert info.value.reason == reason, str(info.value)


def test_format_must_match_the_payload(rgb: np.ndarray) -> None:
    with pytest.raises(ImageRejected, match="format says png but the payload is jpeg") as info:
        C.decode_to_rgb("bgr8; png compressed bgr8", _jpeg(rgb))
    assert info.value.reason == "format"


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(["jpeg", "png"]))
def test_arbitrary_bytes_never_raise_anything_but_a_rejection(data: bytes, fmt: str) -> None:
    for payload in (data, b"\xff\xd8\xff" + data, b"\x89PNG\r\n\x1a\n" + data):
        try:
            C.decode_to_rgb(fmt, payload, max_pixels=4096)
        except ImageRejected as exc:
            assert exc.reason in C.COMPRESSED_REJECT_REASONS


def test_falls_back_when_the_fastest_decoder_is_missing(rgb: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> None:
        raise ImportError("no simplejpeg here")

    monkeypatch.setitem(C._JPEG_FACTORIES, "simplejpeg", missing)
    monkeypatch.setattr(C, "_jpeg_decoder", None)
    assert list(C.available_jpeg_decoders())[0] != "simplejpeg"
    out = C.decode_to_rgb("jpeg", _jpeg(rgb))
    assert C.jpeg_decoder()[0] in ("turbojpeg", "opencv")
    assert np.abs(out.astype(int) - rgb).mean() < 3.0
    monkeypatch.setattr(C, "_jpeg_decoder", None)


# -- nvJPEG path, with torchvision's decoder and the CUDA stream faked ---------------------------
class FakeNvJpeg:
    """Stands in for torchvision.io.decode_jpeg(device='cuda'): decodes on the CPU, records calls,
    fails a batch that contains a corrupt payload as nvJPEG does."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def __call__(self, data: torch.Tensor | list[torch.Tensor], mode: object = None,
                 device: str = "cpu") -> torch.Tensor | list[torch.Tensor]:
        assert device == "cuda"
        batch = isinstance(data, list)
        self.calls.append(("batch" if batch else "single", len(data) if batch else 1))
        images = [self._one(t) for t in (data if batch else [data])]
        return images if batch else images[0]

    @staticmethod
    def _one(tensor: torch.Tensor) -> torch.Tensor:
        image = cv2.imdecode(tensor.numpy(), cv2.IMREAD_COLOR_RGB)
        if image is None or b"\xde\xad" in tensor.numpy().tobytes():
            raise RuntimeError("nvjpegDecode failed: NVJPEG_STATUS_BAD_JPEG")
        return torch.from_numpy(image).permute(2, 0, 1)


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> FakeNvJpeg:
    fake = FakeNvJpeg()
    io = types.ModuleType("torchvision.io")
    io.decode_jpeg = fake
    io.ImageReadMode = types.SimpleNamespace(RGB="RGB")
    monkeypatch.setitem(sys.modules, "torchvision.io", io)
    synced: list[object] = []
    monkeypatch.setattr(torch.cuda, "current_stream",
                        lambda device=None: types.SimpleNamespace(synchronize=lambda: synced.append(device)))
    fake.synced = synced
    return fake


def test_gpu_jpeg_batch_is_one_call_and_returns_hwc_rgb(rgb: np.ndarray, fake_cuda: FakeNvJpeg) -> None:
    payloads = [("rgb8; jpeg compressed bgr8", _jpeg(rgb)), ("jpeg", _jpeg(rgb[::-1].copy()))]
    out = C.decode_jpegs_cuda(payloads, device="cuda")
    assert fake_cuda.calls == [("batch", 2)] and fake_cuda.synced == ["cuda"]
    assert [tuple(t.shape) for t in out] == [rgb.shape, rgb.shape]
    assert np.abs(out[1].numpy().astype(int) - rgb[::-1]).mean() < 3.0


def test_gpu_batch_isolates_bad_payloads(rgb: np.ndarray, fake_cuda: FakeNvJpeg) -> None:
    good = _jpeg(rgb)
    corrupt = good[:300] + b"\xde\xad" + good[302:]  # header intact, nvJPEG fails on it
    payloads = [("jpeg", good), ("jpeg", corrupt), ("jpeg", b"garbage"), ("png", _png(rgb)), ("jpeg", good)]
    out = C.decode_jpegs_cuda(payloads, device="cuda", max_pixels=10**6)
    assert isinstance(out[0], torch.Tensor) and isinstance(out[4], torch.Tensor)
    assert [o.reason for o in out[1:4]] == ["decode", "corrupt", "format"]
    # the three header-valid JPEGs went as one batch, then one by one to find the culprit
    assert fake_cuda.calls == [("batch", 3), ("single", 1), ("single", 1), ("single", 1)]


def test_gpu_path_rejects_oversize_before_decoding(rgb: np.ndarray, fake_cuda: FakeNvJpeg) -> None:
    out = C.decode_jpegs_cuda([("jpeg", _with_jpeg_size(_jpeg(rgb), 40000, 40000))], max_pixels=10**6)
    assert out[0].reason == "too_large" and fake_cuda.calls == []


def test_decode_bench_compares_decoders_and_writes_json(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    try:
        import decode as bench
    finally:
        sys.path.pop(0)
    out = tmp_path / "decode.json"
    assert bench.main(["--sizes", "32x64", "--repeats", "2", "--out", str(out)]) == 0
    row = json.loads(out.read_text())["results"][0]
    assert row["size"] == "32x64" and row["chosen_cpu_decoder"] == C.jpeg_decoder()[0]
    assert {"simplejpeg", "opencv"} <= set(row["jpeg_ms"]) and row["jpeg_ms"]["opencv"]["p50"] > 0
    assert all(diff <= 2 for diff in row["max_abs_diff_vs_opencv"].values())


# -- padding, channel order, any message -----------------------------------------------------------
@pytest.mark.parametrize("codec", ["jpeg", "png"])
@pytest.mark.parametrize("padding", [1, 63, 64, 65, 4096, 1 << 20])
def test_zero_padding_after_the_end_marker_is_accepted(rgb: np.ndarray, codec: str, padding: int) -> None:
    """V4L2/UVC MJPEG drivers hand out whole buffers: the image, then zeros to the buffer's end."""
    data = _jpeg(rgb) if codec == "jpeg" else _png(rgb[:, :, ::-1])
    assert C.check_compressed(codec, data + bytes(padding)) == C.probe(data)
    np.testing.assert_array_equal(C.decode_to_rgb(codec, data + bytes(padding)), C.decode_to_rgb(codec, data))


@pytest.mark.parametrize("codec", ["jpeg", "png"])
@pytest.mark.parametrize("cut", [0.5, 0.95])
@pytest.mark.parametrize("padding", [0, 63, 4096])
def test_truncated_payloads_are_rejected_even_when_padded(rgb: np.ndarray, codec: str, cut: float,
                                                          padding: int) -> None:
    data = _jpeg(rgb) if codec == "jpeg" else _png(rgb[:, :, ::-1])
    with pytest.raises(ImageRejected, match="truncated") as info:
        C.decode_to_rgb(codec, data[: int(len(data) * cut)] + bytes(padding))
    assert info.value.reason == "corrupt"


def test_gpu_path_accepts_padding_and_hands_nvjpeg_the_image_only(rgb: np.ndarray, fake_cuda: FakeNvJpeg,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    data = _jpeg(rgb)
    sizes: list[int] = []
    one = fake_cuda._one
    monkeypatch.setattr(fake_cuda, "_one", lambda tensor: sizes.append(tensor.numel()) or one(tensor))
    (out,) = C.decode_jpegs_cuda([("jpeg", data + bytes(1000))], device="cuda")
    assert tuple(out.shape) == rgb.shape and sizes == [len(data)]


@pytest.mark.parametrize("codec", ["jpeg", "png"])
def test_rgb_bytes_handed_to_the_codec_are_swapped_back(rgb: np.ndarray, codec: str) -> None:
    """``... compressed rgb8``: the producer gave OpenCV RGB bytes (as if BGR); image_transport's
    subscriber swaps the channels back after decoding, and so do we."""
    data = cv2.imencode(".jpg" if codec == "jpeg" else ".png", rgb)[1].tobytes()  # RGB bytes, no conversion
    out = C.decode_to_rgb(f"rgb8; {codec} compressed rgb8", data)
    assert np.abs(out.astype(int) - rgb).mean() < 3.0  # a swap would be ~60 off
    as_bgr = C.decode_to_rgb(f"rgb8; {codec} compressed bgr8", data)
    assert np.abs(as_bgr.astype(int) - rgb[:, :, ::-1]).mean() < 3.0


def test_gpu_path_swaps_rgb_encoded_jpegs_back(rgb: np.ndarray, fake_cuda: FakeNvJpeg) -> None:
    data = cv2.imencode(".jpg", rgb)[1].tobytes()
    swapped, plain = C.decode_jpegs_cuda([("rgb8; jpeg compressed rgb8", data), ("jpeg", _jpeg(rgb))], device="cuda")
    assert np.abs(swapped.numpy().astype(int) - rgb).mean() < 3.0
    assert np.abs(plain.numpy().astype(int) - rgb).mean() < 3.0


def test_any_image_message_becomes_rgb_with_the_nodes_checks(rgb: np.ndarray) -> None:
    """The one entry point for evaluation and training: rclpy messages and messages deserialized
    from a bag, raw or compressed, give the same RGB and the same reject reasons as the node."""
    from sensor_msgs.msg import CompressedImage, Image

    from seg_perception.evaluation.bag_io import TYPESTORE, compressed_image_message, image_message

    raw_bag = image_message(0, "c", rgb, "rgb8")
    jpeg_bag = compressed_image_message(0, "c", rgb, "jpeg", 95)
    raw_ros = Image(height=48, width=64, encoding="rgb8", step=64 * 3, data=rgb.tobytes())
    jpeg_ros = CompressedImage(format="rgb8; jpeg compressed bgr8", data=_jpeg(rgb))
    assert not C.is_compressed(raw_bag) and not C.is_compressed(raw_ros)
    assert C.is_compressed(jpeg_bag) and C.is_compressed(jpeg_ros)
    np.testing.assert_array_equal(C.message_to_rgb(raw_bag), rgb)
    np.testing.assert_array_equal(C.message_to_rgb(raw_ros), rgb)
    np.testing.assert_array_equal(C.message_to_rgb(jpeg_bag), C.decode_to_rgb(jpeg_ros.format, jpeg_ros.data))
    assert np.abs(C.message_to_rgb(jpeg_ros).astype(int) - rgb).mean() < 3.0
    assert C.message_size(jpeg_bag) == C.message_size(raw_ros) == (48, 64)
    # deserialized from CDR, as the evaluator and training read bags
    cdr = TYPESTORE.deserialize_cdr(TYPESTORE.serialize_cdr(jpeg_bag, "sensor_msgs/msg/CompressedImage"),
                                    "sensor_msgs/msg/CompressedImage")
    np.testing.assert_array_equal(C.message_to_rgb(cdr), C.message_to_rgb(jpeg_bag))
    raw_ros.encoding = "16UC1"
    with pytest.raises(ImageRejected) as info:
        C.message_to_rgb(raw_ros)
    assert info.value.reason == "encoding"
    jpeg_ros.data = _jpeg(rgb)[:300]
    with pytest.raises(ImageRejected) as info:
        C.message_to_rgb(jpeg_ros, max_pixels=10**6)
    assert info.value.reason == "corrupt"
    assert C.message_size(jpeg_ros) == (48, 64) and C.message_size(CompressedImage(format="jpeg")) == (0, 0)
    with pytest.raises(ImageRejected, match="exceeds max_pixels") as info:
        C.message_to_rgb(jpeg_bag, max_pixels=100)
    assert info.value.reason == "too_large"


@pytest.mark.parametrize("quality", [10, 49, 50, 80, 95, 100])
def test_jpeg_quality_is_read_from_the_quantisation_table(rgb: np.ndarray, quality: int) -> None:
    data = _jpeg(rgb, quality)
    assert C.jpeg_quality(data) == quality
    assert C.jpeg_quality(np.frombuffer(data + bytes(100), np.uint8)) == quality  # a bag's array, padded


def test_jpeg_quality_of_other_data_is_none(rgb: np.ndarray) -> None:
    data = _jpeg(rgb, 80)
    dqt = data.index(b"\xff\xdb")
    assert C.jpeg_quality(_png(rgb)) is None and C.jpeg_quality(b"") is None
    assert C.jpeg_quality(data[:dqt + 10]) is None  # cut inside the table
    table = bytearray(data)
    table[dqt + 5] ^= 0x55  # one entry off IJG's table: not a libjpeg quality
    assert C.jpeg_quality(bytes(table)) is None
