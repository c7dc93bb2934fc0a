"""Camera messages to RGB without ROS: the checks at arrival, the CPU conversion, and the choice
of nvJPEG for the JPEGs of a batch when the engine runs on CUDA (with the CPU as fallback)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from seg_perception import frame_conversion
from seg_perception.frame_conversion import FrameConverter, is_compressed
from seg_perception.image_conversion import ImageRejected
from seg_perception.scheduler import Frame

RGB = np.full((8, 8, 3), 40, np.uint8)


def _raw(rgb: np.ndarray = RGB, **fields) -> SimpleNamespace:
    msg = SimpleNamespace(encoding="rgb8", height=rgb.shape[0], width=rgb.shape[1], step=rgb.shape[1] * 3,
                          data=rgb.tobytes(), is_bigendian=0)
    msg.__dict__.update(fields)
    return msg


def _compressed(fmt: str, data: bytes) -> SimpleNamespace:
    return SimpleNamespace(format=fmt, data=data)


JPEG = cv2.imencode(".jpg", RGB)[1].tobytes()
PNG = cv2.imencode(".png", RGB)[1].tobytes()


def _converter(device=None, max_pixels: int = 10_000, logged: list | None = None) -> FrameConverter:
    return FrameConverter(max_pixels=lambda: max_pixels, device=lambda: device,
                          log=lambda level, message: (logged if logged is not None else []).append((level, message)))


def test_compressed_is_told_by_its_fields() -> None:
    assert is_compressed(_compressed("jpeg", JPEG)) and not is_compressed(_raw())


def test_check_refuses_without_converting() -> None:
    converter = _converter(max_pixels=63)
    with pytest.raises(ImageRejected) as info:
        converter.check(_raw())  # 64 pixels > 63
    assert info.value.reason == "too_large"
    with pytest.raises(ImageRejected):
        converter.check(_compressed("jpeg", JPEG[:40]))
    _converter().check(_raw())
    _converter().check(_compressed("jpeg", JPEG))


def test_cpu_conversion_of_raw_and_compressed_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(frame_conversion, "CvBridge", None)
    converter = _converter()
    assert (converter.convert(Frame("", _raw(), 0, 0)) == 40).all()
    assert (converter.convert(Frame("", _compressed("png", PNG), 0, 0)) == 40).all()
    results = converter.convert_batch([Frame("", _raw(), 0, 0), Frame("", _raw(data=b"x"), 0, 0)])
    assert isinstance(results[0], np.ndarray) and isinstance(results[1], ImageRejected)


def test_on_cuda_the_jpegs_of_a_batch_go_to_nvjpeg_in_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def fake_nvjpeg(payloads, device, max_pixels):
        calls.append([fmt for fmt, _ in payloads])
        assert device.type == "cuda" and max_pixels == 10_000
        return [np.full((8, 8, 3), 99, np.uint8) for _ in payloads]

    monkeypatch.setattr(frame_conversion, "decode_jpegs_cuda", fake_nvjpeg)
    frames = [Frame("a", _compressed("jpeg", JPEG), 0, 0), Frame("b", _compressed("png", PNG), 0, 0),
              Frame("c", _compressed("rgb8; jpeg compressed bgr8", JPEG), 0, 0)]
    results = _converter(torch.device("cuda")).convert_batch(frames)
    assert calls == [["jpeg", "rgb8; jpeg compressed bgr8"]]
    assert (results[0] == 99).all() and (results[2] == 99).all() and (results[1] == 40).all()  # PNG: CPU
    calls.clear()
    _converter(torch.device("cpu")).convert_batch(frames)
    assert calls == []  # a CPU engine never asks for nvJPEG


def test_without_nvjpeg_the_cpu_decodes_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    def unavailable(payloads, device, max_pixels):
        raise ImportError("no nvjpeg")

    monkeypatch.setattr(frame_conversion, "decode_jpegs_cuda", unavailable)
    logged: list = []
    converter = _converter(torch.device("cuda"), logged=logged)
    results = converter.convert_batch([Frame("a", _compressed("jpeg", JPEG), 0, 0)])
    assert isinstance(results[0], np.ndarray) and abs(int(results[0].mean()) - 40) <= 2
    assert logged and logged[0][0] == logging.WARNING and "decoding on the CPU" in logged[0][1]


def test_cv_bridge_converts_after_our_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    class FakeBridge:
        def imgmsg_to_cv2(self, msg, desired_encoding):
            calls.append(desired_encoding)
            return RGB

    monkeypatch.setattr(frame_conversion, "CvBridge", FakeBridge)
    converter = _converter()
    with pytest.raises(ImageRejected):
        converter.convert(Frame("", _raw(data=b"short"), 0, 0))
    assert calls == []
    assert converter.convert(Frame("", _raw(), 0, 0)) is RGB and calls == ["rgb8"]
