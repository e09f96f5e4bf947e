"""JSON encoding of payloads and results. Never pickle: a payload is data, not code.

Everything encoded here must be storable and decodable by any worker:

* Text is stored as UTF-8, which cannot hold a lone surrogate (``os.fsdecode`` of a file name
  that is not UTF-8 makes them, e.g. ``"/data/\\udcff.csv"``). Such a payload or result is
  written with JSON escapes (``"\\udcff"``): valid UTF-8, decoded back to the very same string.
  Free text (an error, a traceback) goes through :func:`storable`, which spells the bad bytes
  out (``\\xff``) instead.
* A call nested deeper than :data:`MAX_DEPTH` is refused at enqueue (a worker's decoder
  recurses per level, and must never fail on what a producer could encode).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import SerializationError

__all__ = ["MAX_DEPTH", "decode", "encode_payload", "encode_result", "storable"]

MAX_DEPTH = 200  # nesting of lists and objects in one argument or result

_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_encode = _encoder.encode
_ascii = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), allow_nan=False).encode
_FAILURES = (TypeError, ValueError, RecursionError)


def encode_payload(task: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
    """Encode a call; on failure name the argument that could not be encoded."""
    call = {"args": args if type(args) is list else list(args), "kwargs": kwargs}
    try:
        text = _encode(call)
        if _too_deep(text, call):
            raise ValueError(f"nested more than {MAX_DEPTH} levels deep")
    except _FAILURES as exc:
        for i, value in enumerate(args):
            _check(value, f"argument {i} of {task}", exc)
        for key, value in kwargs.items():
            _check(value, f"keyword argument {key!r} of {task}", exc)
        raise SerializationError(f"arguments of {task} are not JSON-serialisable: {exc}") from exc
    return _utf8(text, call)


def encode_result(value: Any) -> str:
    try:
        text = _encode(value)
        if _too_deep(text, value):
            raise ValueError(f"nested more than {MAX_DEPTH} levels deep")
    except _FAILURES as exc:
        raise SerializationError(
            f"the job's return value is not JSON-serialisable ({type(value).__name__}): {exc}"
        ) from exc
    return _utf8(text, value)


def decode(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def storable(text: str) -> str:
    """``text`` as valid UTF-8 without NUL: lone surrogates from undecodable bytes become
    ``\\xff``-style escapes (other lone surrogates ``\\udxxx``), NUL becomes ``\\x00``.
    Free of cost for ordinary text."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:  # surrogates made by os.fsdecode & co: give the bytes back, then spell out bad ones
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _utf8(text: str, value: Any) -> str:
    """JSON with lone surrogates escaped (``\\udcff``) when the plain form is not UTF-8."""
    if text.isascii():  # O(1) in CPython: the common case makes no UTF-8 copy of the payload
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return _ascii(value)


def _too_deep(text: str, value: Any) -> bool:
    """Deeper than MAX_DEPTH? Counting brackets (in C) rules it out for almost every payload;
    only one with that many containers is walked."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        if isinstance(item, Mapping):
            stack.extend((v, depth + 1) for v in item.values() if isinstance(v, list | tuple | Mapping))
        elif isinstance(item, list | tuple):
            stack.extend((v, depth + 1) for v in item if isinstance(v, list | tuple | Mapping))
    return False


def _check(value: Any, where: str, cause: BaseException) -> None:
    try:
        if _too_deep(_encoder.encode(value), [value]):
            raise ValueError(f"nested more than {MAX_DEPTH} levels deep")
    except _FAILURES as exc:
        raise SerializationError(
            f"{where} is not JSON-serialisable ({type(value).__name__}): {exc}. "
            "Pass plain data (str, int, float, bool, None, list, dict) such as an id, "
            "and load the object inside the task."
        ) from cause
