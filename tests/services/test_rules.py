"""Pure rules of the services: avatar names, prompts, render sizes, encryption at rest."""

from __future__ import annotations

import base64
import os

import pytest

from bot.errors import InternalError, InvalidInput, PromptRefused
from bot.services.crypto import DataCipher, KeyConfigError, parse_key, sealed_key_id
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


def test_cipher_round_trip_and_purpose_binding() -> None:
    cipher = DataCipher.from_settings(_key(), None)
    secret = os.urandom(5000)
    sealed = cipher.seal(secret, b"photo")
    assert secret not in sealed and secret[:64] not in sealed
    assert cipher.open(sealed, b"photo") == secret
    with pytest.raises(InternalError):
        cipher.open(sealed, b"features")  # a photo blob pasted into a features column
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(InternalError):
        cipher.open(tampered, b"photo")


def test_cipher_rotation() -> None:
    old_spec, new_spec = _key(), "v2:" + _key()
    old = DataCipher.from_settings(old_spec, None)
    blob = old.seal(b"photo bytes", b"photo")
    rotated = DataCipher.from_settings(new_spec, old_spec)
    assert rotated.open(blob, b"photo") == b"photo bytes"
    assert rotated.needs_reseal(blob)
    resealed = rotated.seal(b"photo bytes", b"photo")
    assert sealed_key_id(resealed) == "v2" and not rotated.needs_reseal(resealed)
    without_old = DataCipher.from_settings(new_spec, None)
    with pytest.raises(InternalError):
        without_old.open(blob, b"photo")


def test_plaintext_passes_through_and_bad_keys_are_refused() -> None:
    plain = DataCipher.from_settings(None, None)
    assert plain.seal(b"abc", b"photo") == b"abc" and not plain.enabled
    assert DataCipher.from_settings(_key(), None).open(b"\x89PNG...", b"photo") == b"\x89PNG..."
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
