"""Text that UTF-8 cannot hold (lone surrogates from undecodable bytes, NUL) is made storable."""

from __future__ import annotations

import json
import os

import pytest

from crashonly import SerializationError
from crashonly.codec import MAX_DEPTH, decode, encode_payload, encode_result, storable


def test_free_text_spells_out_what_utf8_cannot_hold() -> None:
    assert storable("plain é") == "plain é"
    assert storable(os.fsdecode(b"/data/\xff.csv")) == "/data/\\xff.csv"
    assert storable("half \ud800 pair") == "half \\ud800 pair"
    assert storable("nul\x00byte") == "nul\\x00byte"
    for text in (storable(os.fsdecode(b"\xff\xfe")), storable("\udfff\x00")):
        text.encode("utf-8")  # never raises


def test_values_round_trip_exactly() -> None:
    value = {"path": os.fsdecode(b"/data/\xff.csv"), "nul": "a\x00b", "ok": "é"}
    text = encode_result(value)
    text.encode("utf-8")
    assert decode(text) == value
    payload = encode_payload("t", [value["path"]], {})
    payload.encode("utf-8")
    assert json.loads(payload)["args"] == [value["path"]]


def test_nesting_is_capped_and_named() -> None:
    ok: list[object] = []
    for _ in range(MAX_DEPTH - 3):
        ok = [ok]
    encode_payload("t", [ok], {})
    deep: list[object] = []
    for _ in range(MAX_DEPTH + 1):
        deep = [deep]
    with pytest.raises(SerializationError, match=r"keyword argument 'x' of t .*levels deep"):
        encode_payload("t", [], {"x": deep})
    with pytest.raises(SerializationError, match="levels deep"):
        encode_result(deep)
