"""The exception types ONNX Runtime raises, for the modules that open or run sessions (the
export check and the ONNX Runtime backend) without importing each other."""

from __future__ import annotations

import re


def ort_errors() -> tuple[type[BaseException], ...]:
    """What a failing session creation or run raises: ONNX Runtime's own exception types (Fail,
    InvalidProtobuf, ...; plain ``Exception`` subclasses) plus the Python ones it maps to."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    own = tuple(v for v in vars(state).values() if isinstance(v, type) and issubclass(v, Exception))
    return (*own, RuntimeError, ValueError, OSError)


def ort_message(exc: BaseException, limit: int = 400) -> str:
    """ONNX Runtime's message without the parts that say nothing to a user (the error-code
    prefix, the model path it was loaded from, the C++ source location and function signature),
    on one line and at most ``limit`` characters."""
    text = " ".join(str(exc).split())
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : (\w+) : ", r"\1: ", text)
    text = re.sub(r"Load model from .*? failed:", "loading failed: ", text, count=1)
    source = re.search(r"\S*onnxruntime_src/\S+:\d+ ", text)
    if source:  # "<file>:<line> <C++ signature (...)> message": keep the message
        rest, depth = text[source.end():], 0
        for i, char in enumerate(rest):
            depth += (char == "(") - (char == ")")
            if char == ")" and depth == 0:
                text = text[:source.start()] + rest[i + 1:].lstrip()
                break
    return text if len(text) <= limit else text[: limit - 3] + "..."
