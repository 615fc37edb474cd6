"""Pure rules of the services: avatar names, prompts, render sizes, encryption at rest."""

from __future__ import annotations

import base64
import hashlib
import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bot.errors import InternalError, InvalidInput, PromptRefused
from bot.services.crypto import (
    PROMPT_PURPOSE,
    DataCipher,
    KeyConfigError,
    features_binding,
    job_binding,
    keyed_digest,
    output_binding,
    parse_key,
    photo_binding,
    sealed_key_id,
)
from bot.services.names import name_key, normalize_name
from bot.services.prompts import PromptBlocklist, clean_prompt, size_for, styled_prompt
from bot.services.similarity import near_duplicates


def _key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  Mia  ", "Mia"),
        ("Rex\tthe  dog", "Rex the dog"),
        ("Émile", "Émile"),
        ("x" * 32, "x" * 32),
    ],
)
def test_valid_names_are_trimmed(raw: str, expected: str) -> None:
    assert normalize_name(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "x" * 33,
        "@everyone",
        "<@123456>",
        "**bold**",
        "a`b",
        "line\x00",
        "zero\u200bwidth",
        "rtl\u202eoverride",
        "everyone",
        "spoiler||x||",
    ],
)
def test_bad_names_are_refused(raw: str) -> None:
    with pytest.raises(InvalidInput):
        normalize_name(raw)


def test_name_key_is_case_insensitive() -> None:
    assert name_key("MIA") == name_key("mia")
    assert name_key("Straße") == name_key("STRASSE")


def test_blocklist_words_patterns_and_evasions() -> None:
    blocklist = PromptBlocklist(["gore", "/nud(e|ity)/"])
    blocklist.check("a cat in a garden", "")
    blocklist.check("gorgeous portrait", "")  # whole words only
    for prompt in ["lots of GORE", "ｇｏｒｅ scene", "go\u200bre", "nudity", "a Nude statue"]:
        with pytest.raises(PromptRefused):
            blocklist.check(prompt)
    with pytest.raises(PromptRefused):
        blocklist.check("fine", "gore")  # negative prompts are checked too


def test_blocklist_rejects_bad_regex() -> None:
    with pytest.raises(ValueError):
        PromptBlocklist(["/(unclosed/"])


def test_prompt_cleaning() -> None:
    assert clean_prompt("  a   cat\n") == "a cat"
    with pytest.raises(InvalidInput):
        clean_prompt("   ")
    with pytest.raises(InvalidInput):
        clean_prompt("x" * 1001)
    assert clean_prompt("", allow_empty=True) == ""


def test_styles() -> None:
    assert styled_prompt("a cat", "", "none") == ("a cat", "")
    prompt, negative = styled_prompt("a cat", "blurry", "anime")
    assert prompt.startswith("a cat, anime") and negative == "blurry, photo"
    with pytest.raises(InvalidInput):
        styled_prompt("a cat", "", "nope")


@pytest.mark.parametrize(
    ("aspect", "native", "max_side", "expected"),
    [
        ("square", 512, 768, (512, 512)),
        ("portrait", 512, 768, (512, 680)),
        ("landscape", 512, 768, (680, 512)),
        ("portrait", 512, 512, (384, 512)),
        ("square", 512, 256, (256, 256)),
        ("landscape", 64, 768, (80, 64)),
    ],
)
def test_sizes(aspect: str, native: int, max_side: int, expected: tuple[int, int]) -> None:
    width, height = size_for(aspect, native, max_side)  # type: ignore[arg-type]
    assert (width, height) == expected
    assert width % 8 == 0 and height % 8 == 0 and min(width, height) >= 64


@pytest.mark.parametrize("aspect", ["square", "portrait", "landscape"])
@pytest.mark.parametrize("max_side", [64, 100, 250, 768, 1536])
def test_sizes_keep_the_models_multiple(aspect: str, max_side: int) -> None:
    for native in (64, 512, 1024):
        width, height = size_for(aspect, native, max_side, 16)  # type: ignore[arg-type]
        assert width % 16 == 0 and height % 16 == 0 and min(width, height) >= 64
        assert max(width, height) <= max(64, max_side)


PHOTO_1 = photo_binding(1, 100)


def test_cipher_round_trip_and_binding() -> None:
    cipher = DataCipher.from_settings(_key(), None)
    secret = os.urandom(5000)
    sealed = cipher.seal(secret, PHOTO_1)
    assert secret not in sealed and secret[:64] not in sealed
    assert cipher.open(sealed, PHOTO_1) == secret
    with pytest.raises(InternalError):
        cipher.open(sealed, features_binding(1, 100))  # pasted into a features column
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(InternalError):
        cipher.open(tampered, PHOTO_1)


def test_a_blob_is_bound_to_its_row_and_owner() -> None:
    """Audit finding 6: the associated data named only the purpose, so a sealed blob could be
    copied to another row or another member's row and still decrypt."""
    cipher = DataCipher.from_settings(_key(), None)
    sealed = cipher.seal(b"face", photo_binding(1, 100))
    with pytest.raises(InternalError):
        cipher.open(sealed, photo_binding(2, 100))  # another row of the same member
    with pytest.raises(InternalError):
        cipher.open(sealed, photo_binding(1, 200))  # the same row id, another member
    with pytest.raises(InternalError):
        cipher.open(sealed, output_binding(1, 100))  # another table


def test_legacy_blobs_read_until_strict_and_plaintext_is_refused_in_strict_mode() -> None:
    """Audit finding 6: plaintext was accepted while a key was set (a downgrade)."""
    spec = _key()
    lax = DataCipher.from_settings(spec, None)
    legacy = _legacy_seal(spec, b"old photo", b"photo")
    assert lax.open(legacy, PHOTO_1) == b"old photo"  # old format: purpose-only AAD
    assert lax.needs_reseal(legacy)
    assert lax.open(b"\x89PNG plain", PHOTO_1) == b"\x89PNG plain"
    strict = DataCipher.from_settings(spec, None, strict=True)
    for blob in (b"\x89PNG plain", legacy):
        with pytest.raises(InternalError):
            strict.open(blob, PHOTO_1)
        assert strict.open(blob, PHOTO_1, lenient=True)  # reencrypt reads them to re-seal
    assert strict.open(strict.seal(b"x", PHOTO_1), PHOTO_1) == b"x"
    with pytest.raises(InternalError):
        strict.open_text("a plain prompt", job_binding(PROMPT_PURPOSE, 1, 100))
    with pytest.raises(KeyConfigError):
        DataCipher.from_settings(None, None, strict=True)


def test_duplicate_key_ids_are_an_error() -> None:
    """Audit finding 6: a second key under one id silently replaced the first."""
    key = _key()
    with pytest.raises(KeyConfigError, match="used twice"):
        DataCipher.from_settings("a:" + _key(), "b:" + key + ",b:" + _key())
    with pytest.raises(KeyConfigError, match="used twice"):
        DataCipher.from_settings("a:" + key, "a:" + _key())
    with pytest.raises(KeyConfigError, match="used twice"):  # same key twice: same derived id
        DataCipher.from_settings(key, key)


def test_text_columns_are_sealed() -> None:
    cipher = DataCipher.from_settings(_key(), None)
    binding = job_binding(PROMPT_PURPOSE, 5, 100)
    stored = cipher.seal_text("a portrait of Mia", binding)
    assert "portrait" not in stored and stored.isascii()
    assert cipher.open_text(stored, binding) == "a portrait of Mia"
    assert cipher.open_text("written before the key", binding) == "written before the key"
    assert cipher.text_needs_reseal("written before the key")
    assert not cipher.text_needs_reseal(stored)
    with pytest.raises(InternalError):
        cipher.open_text(stored, job_binding(PROMPT_PURPOSE, 6, 100))


def test_photo_digest_is_keyed() -> None:
    """Audit finding 6: a plain SHA-256 lets anyone holding a candidate photo confirm it is
    stored; the digest is an HMAC under a key derived from the data key."""
    photo = os.urandom(1000)
    cipher = DataCipher.from_settings(_key(), None)
    digest = keyed_digest(cipher, photo)
    assert digest != hashlib.sha256(photo).hexdigest() and len(digest) == 64
    assert keyed_digest(cipher, photo) == digest  # duplicates are still found
    assert keyed_digest(DataCipher.from_settings(_key(), None), photo) != digest


def _legacy_seal(spec: str, plaintext: bytes, purpose: bytes) -> bytes:
    """A blob as the previous release sealed it (AVBENC1, associated data = purpose)."""
    key = parse_key(spec)
    nonce = os.urandom(12)
    kid = key.key_id.encode()
    ct = AESGCM(key.key).encrypt(nonce, plaintext, purpose)
    return b"AVBENC1\x00" + bytes([len(kid)]) + kid + nonce + ct


def test_cipher_rotation() -> None:
    old_spec, new_spec = _key(), "v2:" + _key()
    old = DataCipher.from_settings(old_spec, None)
    blob = old.seal(b"photo bytes", PHOTO_1)
    rotated = DataCipher.from_settings(new_spec, old_spec)
    assert rotated.open(blob, PHOTO_1) == b"photo bytes"
    assert rotated.needs_reseal(blob)
    resealed = rotated.seal(b"photo bytes", PHOTO_1)
    assert sealed_key_id(resealed) == "v2" and not rotated.needs_reseal(resealed)
    without_old = DataCipher.from_settings(new_spec, None)
    with pytest.raises(InternalError):
        without_old.open(blob, PHOTO_1)


def test_plaintext_passes_through_and_bad_keys_are_refused() -> None:
    plain = DataCipher.from_settings(None, None)
    assert plain.seal(b"abc", PHOTO_1) == b"abc" and not plain.enabled
    assert DataCipher.from_settings(_key(), None).open(b"\x89PNG...", PHOTO_1) == b"\x89PNG..."
    with pytest.raises(KeyConfigError):
        parse_key(base64.urlsafe_b64encode(b"short").decode())
    with pytest.raises(KeyConfigError):
        parse_key("not base64 !!!")
    assert parse_key("abc:" + _key()).key_id == "abc"


def test_near_duplicates(png_photo) -> None:  # type: ignore[no-untyped-def]
    a = png_photo(seed=1)
    b = png_photo(seed=2)
    resized = png_photo(seed=1, size=300)
    assert near_duplicates([a, b]) == []
    assert near_duplicates([a, b, resized]) == [(0, 2)]
