"""Field-level encryption at rest for the personal data the SQLite store keeps.

AES-256-GCM per field, keys by id (`DATA_ENCRYPTION_KEY`, see `parse_keys`). A stored value is

    enc1:<key id>:<base64url(12-byte nonce ‖ ciphertext ‖ 16-byte tag)>

and the column name is bound into the tag as associated data, so a value cannot be moved into
another column (or another row's email into a name) without failing to decrypt. Values without
the prefix are plaintext from before encryption was switched on; the store re-encrypts them, and
values under an older key id, at start-up (`FieldCipher.needs_rewrite`).

Equality lookups on an encrypted column (a user by email) use a blind index: HMAC-SHA256 of the
normalised value under a key derived from the current key. It reveals which rows share a value,
nothing about the value itself.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PREFIX = "enc1:"
KEY_BYTES = 32
NONCE_BYTES = 12
KEY_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")


class EncryptionKeyError(ValueError):
    """`DATA_ENCRYPTION_KEY` is malformed; the message says how."""


class DecryptionError(RuntimeError):
    """A stored value cannot be decrypted: unknown key id, or it was tampered with."""


def parse_keys(text: str) -> tuple[str, dict[str, bytes]]:
    """`id:base64key[,id:base64key…]` → (current key id, all keys); the first entry is current.

    Each key is 32 random bytes in standard or URL-safe base64, e.g. from
    `python -c "import os, base64; print('k1:' + base64.b64encode(os.urandom(32)).decode())"`.
    Older keys stay listed after the current one until the store has rewritten their rows.
    """
    keys: dict[str, bytes] = {}
    current = ""
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        key_id, sep, encoded = entry.partition(":")
        if not sep or not KEY_ID_RE.fullmatch(key_id):
            raise EncryptionKeyError(
                "each entry must be `<id>:<base64 key>` with an id of [A-Za-z0-9_-]"
            )
        try:
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), altchars=b"-_")
        except (binascii.Error, ValueError):
            raise EncryptionKeyError(f"key {key_id!r} is not base64") from None
        if len(key) != KEY_BYTES:
            raise EncryptionKeyError(f"key {key_id!r} must be {KEY_BYTES} bytes, got {len(key)}")
        if key_id in keys:
            raise EncryptionKeyError(f"key id {key_id!r} is listed twice")
        keys[key_id] = key
        current = current or key_id
    if not keys:
        raise EncryptionKeyError("no key given")
    return current, keys


class FieldCipher:
    def __init__(self, current: str, keys: Mapping[str, bytes]) -> None:
        if current not in keys:
            raise EncryptionKeyError(f"the current key id {current!r} has no key")
        self.current = current
        self._aead = {key_id: AESGCM(key) for key_id, key in keys.items()}
        self._index_key = hmac.new(keys[current], b"smiling-relay blind index", "sha256").digest()

    @classmethod
    def from_text(cls, text: str) -> FieldCipher:
        return cls(*parse_keys(text))

    def encrypt(self, column: str, value: str | None) -> str | None:
        if value is None:
            return None
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead[self.current].encrypt(nonce, value.encode(), column.encode())
        return f"{PREFIX}{self.current}:{base64.urlsafe_b64encode(nonce + sealed).decode()}"

    def decrypt(self, column: str, stored: str | None) -> str | None:
        if stored is None or not stored.startswith(PREFIX):
            return stored  # written before encryption was on
        key_id, _, encoded = stored[len(PREFIX) :].partition(":")
        aead = self._aead.get(key_id)
        if aead is None:
            raise DecryptionError(f"{column}: no key with id {key_id!r} is configured")
        try:
            raw = base64.urlsafe_b64decode(encoded)
            plain = aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], column.encode())
        except (InvalidTag, binascii.Error, ValueError):
            raise DecryptionError(f"{column}: a stored value failed authentication") from None
        return plain.decode()

    def needs_rewrite(self, stored: str | None) -> bool:
        """Plaintext, or encrypted under a key that is no longer the current one."""
        return stored is not None and not stored.startswith(f"{PREFIX}{self.current}:")

    def blind_index(self, value: str) -> str:
        return hmac.new(self._index_key, value.encode(), hashlib.sha256).hexdigest()
