"""JSON encoding of payloads and results. Never pickle: a payload is data, not code."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import SerializationError

__all__ = ["decode", "encode_payload", "encode_result"]

_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_encode = _encoder.encode


def encode_payload(task: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
    """Encode a call; on failure name the argument that could not be encoded."""
    try:
        text = _encode({"args": args if type(args) is list else list(args), "kwargs": kwargs})
        if not text.isascii():  # O(1) for ASCII text; else a lone surrogate has no UTF-8
            text.encode()  # form, and no backend could store it (UnicodeEncodeError)
        return text
    except (TypeError, ValueError) as exc:
        for i, value in enumerate(args):
            _check(value, f"argument {i} of {task}", exc)
        for key, value in kwargs.items():
            _check(value, f"keyword argument {key!r} of {task}", exc)
        raise SerializationError(f"arguments of {task} are not JSON-serialisable: {exc}") from exc


def encode_result(value: Any) -> str:
    try:
        return _encoder.encode(value)
    except (TypeError, ValueError) as exc:
        raise SerializationError(
            f"the job's return value is not JSON-serialisable ({type(value).__name__}): {exc}"
        ) from exc


def decode(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _check(value: Any, where: str, cause: Exception) -> None:
    try:
        _encoder.encode(value).encode()
    except UnicodeEncodeError as exc:
        raise SerializationError(
            f"{where} holds text with a lone surrogate ({exc.object[exc.start]!r}), which "
            "cannot be stored as UTF-8 (os.fsdecode gives these for non-UTF-8 file names): "
            "pass bytes as text another way, e.g. name.encode('utf-8', 'surrogateescape').hex()"
        ) from cause
    except (TypeError, ValueError) as exc:
        raise SerializationError(
            f"{where} is not JSON-serialisable ({type(value).__name__}): {exc}. "
            "Pass plain data (str, int, float, bool, None, list, dict) such as an id, "
            "and load the object inside the task."
        ) from cause
