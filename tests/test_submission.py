"""Tests of roadwork.deploy.submission: SS58 hotkeys and the model card a NATIX submission carries."""

from __future__ import annotations

import getpass
import hashlib
from datetime import datetime, timedelta, timezone

import pytest

from roadwork.deploy.hf_export import MODEL_CARD_FIELDS
from roadwork.deploy.submission import decode_ss58, submission_card

# Substrate's well-known development key "Alice": its sr25519 public key and generic (prefix 42) address
ALICE = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"
ALICE_KEY = "d43593c715fdd31c61141abd04a99fd6822c8558854ccde39a5684e7a56da27d"
B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def _encode(prefix_bytes: bytes, key: bytes) -> str:
    """Reference SS58 encoder (the spec, written independently of the decoder under test)."""
    payload = prefix_bytes + key
    payload += hashlib.blake2b(b"SS58PRE" + payload, digest_size=64).digest()[:2]
    number, text = int.from_bytes(payload, "big"), ""
    while number:
        number, digit = divmod(number, 58)
        text = B58[digit] + text
    return "1" * (len(payload) - len(payload.lstrip(b"\0"))) + text


def test_decodes_the_known_development_address() -> None:
    key = decode_ss58(ALICE)
    assert (key.prefix, key.public_key.hex(), key.address) == (42, ALICE_KEY, ALICE)
    assert _encode(bytes([42]), bytes.fromhex(ALICE_KEY)) == ALICE


def test_two_byte_prefixes_round_trip() -> None:
    # prefix 255 as the spec packs it into two bytes
    prefix = 255
    first = ((prefix & 0b1111_1100) >> 2) | 0b0100_0000
    second = (prefix >> 8) | ((prefix & 0b11) << 6)
    address = _encode(bytes([first, second]), bytes(range(32)))
    key = decode_ss58(address)
    assert key.prefix == prefix and key.public_key == bytes(range(32))


@pytest.mark.parametrize(
    ("address", "message"),
    [
        (ALICE[:-1] + ("R" if ALICE[-1] != "R" else "S"), "checksum"),
        (ALICE[:10] + "0" + ALICE[11:], "not a base58 character"),
        (ALICE[:-4], "bytes"),
        ("", "non-empty"),
        (_encode(bytes([42]), bytes(20)), "32-byte public key"),
    ],
)
def test_bad_addresses_are_refused_saying_why(address: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_ss58(address)


def _card(**overrides):
    arguments = {"hotkey": ALICE, "model_name": "acme-roadwork-v1", "version": "1.2.3", "description": "d"}
    return submission_card(**{**arguments, **overrides})


def test_a_valid_card_has_the_five_fields_and_the_build_time() -> None:
    before = datetime.now(timezone.utc).replace(microsecond=0)
    card = _card()
    assert tuple(card) == MODEL_CARD_FIELDS
    assert card["submitted_by"] == ALICE and card["model_name"] == "acme-roadwork-v1"
    moment = datetime.fromisoformat(card["submission_time"].replace("Z", "+00:00"))
    assert before <= moment <= datetime.now(timezone.utc)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"hotkey": getpass.getuser()}, "user name|SS58"),
        ({"hotkey": ALICE[:-1] + "x"}, "checksum|bytes"),
        ({"model_name": ""}, "--model-name"),
        ({"model_name": "roadwork-classifier"}, "--model-name"),
        ({"version": "1.2"}, "X.Y.Z"),
        ({"now": datetime.now(timezone.utc) + timedelta(hours=1)}, "between 2000-01-01 and now"),
        ({"now": datetime(1999, 12, 31, tzinfo=timezone.utc)}, "between 2000-01-01 and now"),
        ({"now": datetime(2020, 1, 1)}, "aware"),
    ],
)
def test_cards_the_validator_would_refuse_are_refused(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _card(**overrides)
