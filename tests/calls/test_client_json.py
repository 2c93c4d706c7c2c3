"""Client JSON: deep nesting and lone surrogates are refused as invalid, not crashes later."""

from __future__ import annotations

import pytest

from calls.client_json import MAX_DEPTH, ClientJsonError, load_client_json


def test_ordinary_json_loads() -> None:
    text = '{"event": "ice-candidate", "data": {"candidate": {"candidate": "candidate:1 1 udp"}}}'
    assert load_client_json(text)["data"]["candidate"]["candidate"] == "candidate:1 1 udp"
    assert load_client_json(b'["\\u00e9"]') == ["é"]


@pytest.mark.parametrize(
    "text",
    [
        "[" * 5000 + "]" * 5000,  # past the recursion limit of json.loads itself
        "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1),  # parsed, but deeper than we allow
        '{"a":' * 40 + "1" + "}" * 40,
    ],
)
def test_deep_nesting_is_refused(text: str) -> None:
    with pytest.raises(ClientJsonError, match="nested deeper"):
        load_client_json(text)


@pytest.mark.parametrize("text", ['{"name": "\\ud800"}', '{"\\udfff": 1}', '["ok", ["\\ud83d"]]'])
def test_lone_surrogates_are_refused(text: str) -> None:
    with pytest.raises(ClientJsonError, match="lone surrogates"):
        load_client_json(text)


def test_a_surrogate_pair_is_a_valid_character() -> None:
    assert load_client_json('"\\ud83d\\ude00"') == "\U0001f600"


@pytest.mark.parametrize("text", ["", "{", "nan-ish", b"\xff\xfe"])
def test_malformed_text_is_refused(text: str | bytes) -> None:
    with pytest.raises(ClientJsonError):
        load_client_json(text)
