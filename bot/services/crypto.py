"""Encryption at rest for photos, features and rendered outputs (AES-256-GCM).

When ``AVATARBOT_DATA_KEY`` is set, every blob the services store is sealed as::

    b"AVBENC2\\0" | len(key_id) (1 byte) | key_id (ascii) | nonce (12 bytes) | ciphertext+tag

The key id travels with each blob, so several keys can coexist during a rotation and a blob
always names the key that opens it. The associated data (``Binding``) binds a blob to its
purpose, table, row id and owner: a blob copied into another column, another row or another
member's row does not decrypt. Rows are inserted with an empty placeholder and sealed once
their id is known, in the same transaction.

Older formats, read until ``reencrypt`` (bot/services/privacy.py) rewrites them: ``AVBENC1``
blobs (associated data = the purpose only) and blobs written before a key was configured
(plaintext). With ``AVATARBOT_ENCRYPTION_STRICT=true`` (set it once ``reencrypt`` has run)
both are refused: a plaintext or old-format blob written into the database is not accepted
as data (no downgrade).

Text columns (prompts, interaction tokens) hold ``seal_text``: the sealed blob in urlsafe
base64, or the text itself without a key.

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

MAGIC = b"AVBENC2\x00"
LEGACY_MAGIC = b"AVBENC1\x00"  # associated data = purpose only (read, never written)
NONCE_BYTES = 12
# ``seal_text``'s output starts with this (urlsafe base64 of the magic).
TEXT_PREFIX = base64.urlsafe_b64encode(MAGIC[:6]).decode("ascii")


class KeyConfigError(ValueError):
    """A data key in the settings is malformed (reported at start, never at first use)."""


@dataclass(frozen=True)
class Binding:
    """What a sealed blob belongs to: its purpose (column), table, row id and owner (the
    Discord user whose data it is). All four are authenticated with the blob."""

    purpose: bytes
    table: str
    row_id: int
    owner_id: int

    def aad(self) -> bytes:
        return b"|".join(
            (
                b"avatarbot/2",
                self.purpose,
                self.table.encode("ascii"),
                str(int(self.row_id)).encode("ascii"),
                str(int(self.owner_id)).encode("ascii"),
            )
        )


class DecryptionError(InternalError):
    """A sealed blob cannot be opened: unknown key id, wrong key, or corrupted bytes."""

    def __init__(self, detail: str) -> None:
        super().__init__()
        self.detail = detail
        # Logged where it is made (the reference may be shown by a process that never logs
        # it), with the stack that made it.
        logger.error(
            "decryption failed (reference %s): %s", self.reference, detail, stack_info=True
        )


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
    """Sealed in the current or the legacy format."""
    return blob.startswith(MAGIC) or blob.startswith(LEGACY_MAGIC)


def sealed_key_id(blob: bytes) -> str | None:
    """The key id a blob was sealed with, or None for a plaintext blob."""
    if not is_sealed(blob):
        return None
    n = blob[len(MAGIC)]
    return blob[len(MAGIC) + 1 : len(MAGIC) + 1 + n].decode("ascii", errors="replace")


class DataCipher:
    """Seals and opens blobs; a cipher without a current key stores plaintext."""

    def __init__(
        self, current: DataKey | None, old: tuple[DataKey, ...] = (), *, strict: bool = False
    ) -> None:
        if strict and current is None:
            raise KeyConfigError(
                "AVATARBOT_ENCRYPTION_STRICT needs AVATARBOT_DATA_KEY: without a key nothing "
                "is sealed"
            )
        self.current = current
        self.strict = strict
        self._keys: dict[str, AESGCM] = {}
        # Raw keys, current first: only for ``derive`` (keys never leave this class).
        self._raw = tuple(k.key for k in (*((current,) if current else ()), *old))
        for k in (*((current,) if current else ()), *old):
            if k.key_id in self._keys:
                # Two keys under one id: blobs would name a key that cannot open them.
                raise KeyConfigError(
                    f"data key id {k.key_id!r} is used twice (AVATARBOT_DATA_KEY and "
                    "AVATARBOT_OLD_DATA_KEYS must name distinct keys)"
                )
            self._keys[k.key_id] = AESGCM(k.key)

    @classmethod
    def from_settings(
        cls, data_key: str | None, old_data_keys: str | None, *, strict: bool = False
    ) -> DataCipher:
        current = parse_key(data_key) if data_key else None
        old = tuple(parse_key(s) for s in (old_data_keys or "").split(",") if s.strip())
        return cls(current, old, strict=strict)

    @property
    def enabled(self) -> bool:
        return self.current is not None

    def seal(self, plaintext: bytes, binding: Binding) -> bytes:
        """Encrypt with the current key (or return the plaintext when no key is set)."""
        if self.current is None:
            return plaintext
        nonce = os.urandom(NONCE_BYTES)
        kid = self.current.key_id.encode("ascii")
        ct = self._keys[self.current.key_id].encrypt(nonce, plaintext, binding.aad())
        return MAGIC + bytes([len(kid)]) + kid + nonce + ct

    def open(self, blob: bytes, binding: Binding, *, lenient: bool = False) -> bytes:
        """Decrypt a sealed blob with the key it names. Plaintext and legacy blobs (see the
        module docstring) are read unless the cipher is strict; ``lenient`` reads them anyway
        (only ``reencrypt``, which rewrites them)."""
        legacy = blob.startswith(LEGACY_MAGIC)
        if self.strict and not lenient and (legacy or not is_sealed(blob)):
            raise DecryptionError(
                f"{binding.table}.{binding.purpose.decode()} row {binding.row_id} is "
                + ("in the old sealed format" if legacy else "not sealed")
                + " while AVATARBOT_ENCRYPTION_STRICT is on (run `avatarbot avatar reencrypt`)"
            )
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
            aad = binding.purpose if legacy else binding.aad()
            return aead.decrypt(nonce, blob[start + NONCE_BYTES :], aad)
        except InvalidTag as exc:
            raise DecryptionError(f"blob sealed with key {kid!r} failed authentication") from exc

    def derive(self, purpose: bytes) -> tuple[bytes, ...]:
        """Secrets for another use (e.g. keyed hashes), one per configured key, the current
        key's first: HMAC-SHA256(key, purpose). Empty when no key is configured."""
        return tuple(hmac.new(key, purpose, hashlib.sha256).digest() for key in self._raw)

    def needs_reseal(self, blob: bytes) -> bool:
        """True when ``blob`` is not sealed with the current key in the current format
        (rotation, first key, or a legacy blob)."""
        if self.current is None:
            return False
        return not blob.startswith(MAGIC) or sealed_key_id(blob) != self.current.key_id

    # -- text columns (prompts, interaction tokens) ---------------------------------------

    def seal_text(self, text: str, binding: Binding) -> str:
        """``seal`` for a text column: urlsafe base64 of the sealed UTF-8 (text as-is without
        a key)."""
        if self.current is None:
            return text
        return base64.urlsafe_b64encode(self.seal(text.encode("utf-8"), binding)).decode("ascii")

    def open_text(self, stored: str, binding: Binding, *, lenient: bool = False) -> str:
        """``open`` for a text column; rows written before a key was set are plain text."""
        blob = _text_blob(stored)
        if blob is None:
            if self.strict and not lenient and stored:
                raise DecryptionError(
                    f"{binding.table}.{binding.purpose.decode()} row {binding.row_id} is not "
                    "sealed while AVATARBOT_ENCRYPTION_STRICT is on"
                )
            return stored
        return self.open(blob, binding, lenient=lenient).decode("utf-8")

    def text_needs_reseal(self, stored: str) -> bool:
        if self.current is None or not stored:
            return False
        blob = _text_blob(stored)
        return blob is None or self.needs_reseal(blob)


def _text_blob(stored: str) -> bytes | None:
    """The sealed blob a text column holds, or None for plain text."""
    if not stored.startswith(TEXT_PREFIX):
        return None
    try:
        blob = base64.urlsafe_b64decode(stored.encode("ascii"))
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return None
    return blob if blob.startswith(MAGIC) else None


def keyed_digest(cipher: DataCipher, data: bytes) -> str:
    """The stored fingerprint of a photo (duplicate detection): HMAC-SHA256 under a key
    derived from the current data key, so holding a candidate photo does not confirm it is
    stored. Plain SHA-256 without a key (the photo itself is then stored in the clear)."""
    secrets = cipher.derive(PHOTO_DIGEST_PURPOSE)
    if not secrets:
        return hashlib.sha256(data).hexdigest()
    return hmac.new(secrets[0], data, hashlib.sha256).hexdigest()


PHOTO_DIGEST_PURPOSE = b"avatarbot/photo-digest"


# What each sealed column is bound to: its purpose and table (with the row id and owner).
PHOTO_PURPOSE = b"photo"
FEATURES_PURPOSE = b"features"
OUTPUT_PURPOSE = b"output"
PROMPT_PURPOSE = b"prompt"
NEGATIVE_PROMPT_PURPOSE = b"negative_prompt"
INTERACTION_TOKEN_PURPOSE = b"interaction_token"


def photo_binding(photo_id: int, owner_id: int) -> Binding:
    return Binding(PHOTO_PURPOSE, "photos", photo_id, owner_id)


def features_binding(feature_id: int, owner_id: int) -> Binding:
    return Binding(FEATURES_PURPOSE, "features", feature_id, owner_id)


def output_binding(output_id: int, owner_id: int) -> Binding:
    return Binding(OUTPUT_PURPOSE, "job_outputs", output_id, owner_id)


def job_binding(purpose: bytes, job_id: int, owner_id: int) -> Binding:
    """A render job's sealed text columns (prompt, negative prompt, interaction token)."""
    return Binding(purpose, "render_jobs", job_id, owner_id)


def ask_binding(purpose: bytes, ask_id: int, requester_id: int) -> Binding:
    """A request to render with another member's avatar: its texts as a job's, bound to the
    request and to the requester whose prompt it is (bot/services/friends.py)."""
    return Binding(purpose, "avatar_asks", ask_id, requester_id)
