"""What a NATIX miner publishes: the Hugging Face export with a model card the subnet's rules accept.

The rules (natixnetwork/streetvision-subnet ``natix/validator/verify_models.py`` ``validate_model_card``,
before the check moved to NATIX's servers): ``model_name``, ``version``, ``submitted_by`` and
``submission_time`` are required; ``submitted_by`` is the miner's hotkey, an SS58 address; the submission
time (ISO 8601 or Unix seconds) lies between 2000-01-01 and now; a ``model_name`` already used by another
miner is refused, so the project's default name (shared by every user) and the OS user name are refused here.

SS58 (https://docs.substrate.io/reference/address-formats/): base58 of ``prefix || public key || checksum``,
where the prefix is one byte (0-63) or two (64-16383), the key of a hotkey is 32 bytes and the checksum is the
first 2 bytes of ``blake2b-512(b"SS58PRE" || prefix || public key)``.
"""

from __future__ import annotations

import getpass
import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone

__all__ = [
    "DEFAULT_MODEL_NAMES",
    "Hotkey",
    "decode_ss58",
    "submission_card",
]

_BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_EARLIEST = datetime(2000, 1, 1, tzinfo=timezone.utc)
DEFAULT_MODEL_NAMES = frozenset({"roadwork-classifier", "roadwork", "model", "my-model"})
"""Names every user of this project would share: a submission must choose its own."""


@dataclass(frozen=True)
class Hotkey:
    """A decoded SS58 address: its network prefix and 32-byte public key."""

    address: str
    prefix: int
    public_key: bytes


def _base58_decode(text: str) -> bytes:
    number = 0
    for char in text:
        digit = _BASE58.find(char)
        if digit < 0:
            raise ValueError(f"{char!r} is not a base58 character")
        number = number * 58 + digit
    body = number.to_bytes((number.bit_length() + 7) // 8, "big") if number else b""
    return b"\0" * (len(text) - len(text.lstrip("1"))) + body


def decode_ss58(address: str) -> Hotkey:
    """The :class:`Hotkey` of an SS58 ``address`` holding a 32-byte public key; ValueError says what is wrong.

    Checked: base58 characters, a one- or two-byte network prefix, a 32-byte key and the 2-byte blake2b
    checksum (a mistyped character fails it).
    """
    hint = "pass the miner's hotkey as an SS58 address (e.g. from `btcli wallet list`)"
    if not isinstance(address, str) or not address.strip():
        raise ValueError(f"hotkey must be a non-empty SS58 address; {hint}.")
    address = address.strip()
    try:
        data = _base58_decode(address)
    except ValueError as exc:
        raise ValueError(f"hotkey {address!r} is not an SS58 address ({exc}); {hint}.") from None
    if not data or data[0] >= 128:
        raise ValueError(f"hotkey {address!r} is not an SS58 address (bad network prefix); {hint}.")
    if data[0] < 64:
        prefix, prefix_length = data[0], 1
    else:
        if len(data) < 2:
            raise ValueError(f"hotkey {address!r} is too short for an SS58 address; {hint}.")
        prefix = ((data[0] & 0x3F) << 2) | (data[1] >> 6) | ((data[1] & 0x3F) << 8)
        prefix_length = 2
    if len(data) != prefix_length + 32 + 2:
        raise ValueError(
            f"hotkey {address!r} decodes to {len(data)} bytes; an SS58 hotkey holds a {prefix_length}-byte "
            f"prefix, a 32-byte public key and a 2-byte checksum ({prefix_length + 34} bytes); {hint}."
        )
    checksum = hashlib.blake2b(b"SS58PRE" + data[:-2], digest_size=64).digest()[:2]
    if checksum != data[-2:]:
        raise ValueError(f"hotkey {address!r} fails its SS58 checksum (a character is wrong?); {hint}.")
    return Hotkey(address, prefix, data[prefix_length:-2])


def submission_card(
    *,
    hotkey: str,
    model_name: str,
    version: str,
    description: str,
    now: datetime | None = None,
) -> dict[str, str]:
    """The five model-card fields of a submission built at ``now`` (default: the clock, UTC).

    Refuses, with a message saying what to pass: a hotkey that is not a valid SS58 address (the OS user name
    included), an empty model name or one of :data:`DEFAULT_MODEL_NAMES`, a version other than ``X.Y.Z``,
    and a build time before 2000-01-01 or after the clock.
    """
    from roadwork.deploy.hf_export import validate_model_card

    if isinstance(hotkey, str) and hotkey.strip() == getpass.getuser():
        raise ValueError(
            f"submitted_by {hotkey!r} is this machine's user name; the validator requires the miner's hotkey "
            "(an SS58 address): pass --hotkey."
        )
    key = decode_ss58(hotkey)
    name = model_name.strip() if isinstance(model_name, str) else ""
    if not name or name.lower() in DEFAULT_MODEL_NAMES:
        raise ValueError(
            f"model name {model_name!r} is empty or a default every user of this project shares; the "
            "validator refuses a name another miner already used: pass --model-name with your own name "
            "(e.g. '<team>-roadwork-v1')."
        )
    clock = datetime.now(timezone.utc)
    moment = clock if now is None else now
    if moment.tzinfo is None or not _EARLIEST <= moment <= clock:
        raise ValueError(
            f"submission time {moment.isoformat()} must be an aware time between 2000-01-01 and now "
            f"({clock.isoformat(timespec='seconds')})."
        )
    return validate_model_card(
        {
            "model_name": name,
            "description": description,
            "version": version,
            "submitted_by": key.address,
            "submission_time": moment.astimezone(timezone.utc),
        }
    )
