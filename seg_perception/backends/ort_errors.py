"""The exception types ONNX Runtime raises, for the modules that open or run sessions (the
export check and the ONNX Runtime backend) without importing each other."""

from __future__ import annotations


def ort_errors() -> tuple[type[BaseException], ...]:
    """What a failing session creation or run raises: ONNX Runtime's own exception types (Fail,
    InvalidProtobuf, ...; plain ``Exception`` subclasses) plus the Python ones it maps to."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    own = tuple(v for v in vars(state).values() if isinstance(v, type) and issubclass(v, Exception))
    return (*own, RuntimeError, ValueError, OSError)
