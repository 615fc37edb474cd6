"""Encryption at rest for photos, features and rendered outputs (AES-256-GCM).

When ``AVATARBOT_DATA_KEY`` is set, every blob the services store is sealed as::

    b"AVBENC1\\0" | len(key_id) (1 byte) | key_id (ascii) | nonce (12 bytes) | ciphertext+tag

The key id travels with each blob, so several keys can coexist during a rotation and a blob
always names the key that opens it. The associated data binds a blob to its purpose
(``b"photo"``, ``b"features"``, ``b"output"``): a photo blob pasted into a features column does
not decrypt. Blobs written before a key was configured are stored in the clear and are read
as-is; ``reencrypt`` (bot/services/privacy.py) seals them.

Key format: 32 random bytes, urlsafe base64 (``python -c "import os, base64;
print(base64.urlsafe_b64encode(os.urandom(32)).decode())"``), optionally prefixed with an id
as ``id:key``. Without an explicit id, the id is ``k`` + the first 8 hex digits of the key's
SHA-256, so the same key always gets the same id.

Rotation: set the new key as ``AVATARBOT_DATA_KEY``, move the old one to
``AVATARBOT_OLD_DATA_KEYS`` (comma-separated), run ``avatarbot avatar reencrypt`` (it rewrites
every blob not sealed with the current key), then drop the old key. Until then, blobs sealed
with either key read fine.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bot.errors import InternalError

logger = logging.getLogger(__name__)

MAGIC = b"AVBENC1\x00"
NONCE_BYTES = 12


class KeyConfigError(ValueError):
    """A data key in the settings is malformed (reported at start, never at first use)."""


class DecryptionError(InternalError):
    """A sealed blob cannot be opened: unknown key id, wrong key, or corrupted bytes."""

    def __init__(self, detail: str) -> None:
        super().__init__()
        self.detail = detail
        logger.error("decryption failed (reference %s): %s", self.reference, detail)


@dataclass(frozen=True)
class DataKey:
    key_id: str
    key: bytes


def parse_key(spec: str) -> DataKey:
    """Parse ``key`` or ``id:key`` (urlsafe base64 of 32 bytes)."""
    spec = spec.strip()
    key_id, sep, encoded = spec.rpartition(":")
    if not sep:
        key_id, encoded = "", spec
    try:
        key = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    except (binascii.Error, ValueError) as exc:
        raise KeyConfigError("data key is not valid urlsafe base64") from exc
    if len(key) != 32:
        raise KeyConfigError(f"data key must be 32 bytes (AES-256), got {len(key)}")
    if not key_id:
        key_id = "k" + hashlib.sha256(key).hexdigest()[:8]
    if not key_id.isascii() or len(key_id) > 64 or not key_id.replace("-", "").isalnum():
        raise KeyConfigError(f"data key id {key_id!r} must be 1-64 ascii letters/digits/dashes")
    return DataKey(key_id, key)


def is_sealed(blob: bytes) -> bool:
    return blob.startswith(MAGIC)


def sealed_key_id(blob: bytes) -> str | None:
    """The key id a blob was sealed with, or None for a plaintext blob."""
    if not is_sealed(blob):
        return None
    n = blob[len(MAGIC)]
    return blob[len(MAGIC) + 1 : len(MAGIC) + 1 + n].decode("ascii")


class DataCipher:
    """Seals and opens blobs; a cipher without a current key stores plaintext."""

    def __init__(self, current: DataKey | None, old: tuple[DataKey, ...] = ()) -> None:
        self.current = current
        self._keys: dict[str, AESGCM] = {}
        # Raw keys, current first: only for ``derive`` (keys never leave this class).
        self._raw = tuple(k.key for k in (*((current,) if current else ()), *old))
        for k in (*old, *((current,) if current else ())):
            self._keys[k.key_id] = AESGCM(k.key)

    @classmethod
    def from_settings(cls, data_key: str | None, old_data_keys: str | None) -> DataCipher:
        current = parse_key(data_key) if data_key else None
        old = tuple(parse_key(s) for s in (old_data_keys or "").split(",") if s.strip())
        return cls(current, old)

    @property
    def enabled(self) -> bool:
        return self.current is not None

    def seal(self, plaintext: bytes, purpose: bytes) -> bytes:
        """Encrypt with the current key (or return the plaintext when no key is set)."""
        if self.current is None:
            return plaintext
        nonce = os.urandom(NONCE_BYTES)
        kid = self.current.key_id.encode("ascii")
        ct = self._keys[self.current.key_id].encrypt(nonce, plaintext, purpose)
        return MAGIC + bytes([len(kid)]) + kid + nonce + ct

    def open(self, blob: bytes, purpose: bytes) -> bytes:
        """Decrypt a sealed blob with the key it names; plaintext blobs pass through."""
        if not is_sealed(blob):
            return blob
        kid = sealed_key_id(blob)
        aead = self._keys.get(kid or "")
        if aead is None:
            raise DecryptionError(
                f"blob sealed with key {kid!r}, which is neither AVATARBOT_DATA_KEY nor in "
                "AVATARBOT_OLD_DATA_KEYS"
            )
        start = len(MAGIC) + 1 + len(kid or "")
        nonce = blob[start : start + NONCE_BYTES]
        try:
            return aead.decrypt(nonce, blob[start + NONCE_BYTES :], purpose)
        except InvalidTag as exc:
            raise DecryptionError(f"blob sealed with key {kid!r} failed authentication") from exc

    def derive(self, purpose: bytes) -> tuple[bytes, ...]:
        """Secrets for another use (e.g. keyed hashes), one per configured key, the current
        key's first: HMAC-SHA256(key, purpose). Empty when no key is configured."""
        return tuple(hmac.new(key, purpose, hashlib.sha256).digest() for key in self._raw)

    def needs_reseal(self, blob: bytes) -> bool:
        """True when ``blob`` is not sealed with the current key (rotation or first key)."""
        if self.current is None:
            return False
        return sealed_key_id(blob) != self.current.key_id
