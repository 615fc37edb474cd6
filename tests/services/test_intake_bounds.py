"""Audit finding 1 (memory exhaustion through uploads): the decompression-bomb-like PNG of the
issue is refused before it is decoded (peak memory measured in a fresh interpreter), a 48 MP
phone JPEG is still accepted cheaply, at most DECODE_SLOTS photos are decoded at a time, and a
member has at most one avatar creation in progress (the process at most MAX_INTAKES)."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import zlib
from collections.abc import Sequence
from pathlib import Path

import pytest
from PIL import Image

from bot.config import PhotoLimits
from bot.errors import QueueFull
from bot.services import avatars as avatars_module
from bot.services import photo_intake
from bot.services.container import Services
from bot.services.screening import Screened, screen_uploads
from tests.fixtures.photos import encode, intake_peaks, raw_png
from tests.fixtures.services import GUILD, make_photo


def single_colour_png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """An 8-bit RGB PNG of one colour, compressed row block by row block (never held raw):
    8000×7999 gives the issue's ~258 KB file that decodes to 64 MP."""
    comp = zlib.compressobj(9)
    row = b"\x00" + bytes(rgb) * width
    block = row * 256
    out, done = [], 0
    while done < height:
        n = min(256, height - done)
        out.append(comp.compress(block if n == 256 else row * n))
        done += n
    out.append(comp.flush())
    return raw_png(width, height, 8, 2, b"".join(out))


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status")
def test_the_issue_png_bomb_is_refused_without_decoding(tmp_path: Path) -> None:
    bomb = single_colour_png(8000, 7999, (200, 30, 30))
    assert len(bomb) < 400_000  # the issue's ~258 KB
    (tmp_path / "bomb.png").write_bytes(bomb)
    # A 48 MP phone photo (8064×6048, baseline JPEG) stays accepted: decoded at 1/4 scale.
    (tmp_path / "phone48.jpg").write_bytes(encode(Image.new("RGB", (8064, 6048), "teal"), "JPEG"))
    result = intake_peaks([tmp_path / "bomb.png", tmp_path / "phone48.jpg"])
    verdict, peak_mb = result["bomb.png"]
    assert verdict == "too_many_pixels", result  # was accepted, at ~324 MB
    assert peak_mb < 20, result
    verdict, peak_mb = result["phone48.jpg"]
    assert verdict == [1024, 768], result
    assert peak_mb < 40, result


def test_decode_budget_defaults() -> None:
    limits = PhotoLimits()
    assert limits.max_pixels <= 25_000_000 < 5712 * 4284 + 1_000_000  # 24 MP phones pass
    assert limits.max_jpeg_pixels >= 8160 * 6120  # 50 MP phone JPEGs pass
    # A progressive JPEG keeps full-size coefficients: the full-size budget applies.
    progressive = encode(Image.new("RGB", (6000, 4500), "teal"), "JPEG", progressive=True)
    with pytest.raises(photo_intake.InvalidPhoto, match="limit is 25 megapixels"):
        photo_intake.normalize_photo(progressive, "p.jpg", limits)


def test_at_most_decode_slots_photos_are_decoded_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    inside, most = 0, 0
    lock = threading.Lock()
    real = photo_intake._normalize

    def slow(*args: object, **kwargs: object) -> photo_intake.NormalizedPhoto:
        nonlocal inside, most
        with lock:
            inside += 1
            most = max(most, inside)
        time.sleep(0.05)
        with lock:
            inside -= 1
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(photo_intake, "_normalize", slow)
    data = make_photo(1, size=300)
    threads = [
        threading.Thread(target=photo_intake.normalize_photo, args=(data, "a.png", PhotoLimits()))
        for _ in range(4 * photo_intake.DECODE_SLOTS)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most == photo_intake.DECODE_SLOTS


class _HeldIntake:
    """``screen_uploads`` that waits until released: a creation stays in intake."""

    def __init__(self) -> None:
        self.entered = asyncio.Queue[int]()
        self.release = asyncio.Event()

    async def __call__(
        self, limits: PhotoLimits, files: Sequence[tuple[str, bytes]], existing: Sequence[str] = ()
    ) -> Screened:
        await self.entered.put(len(files))
        await self.release.wait()
        return await screen_uploads(limits, files, existing)


async def test_one_creation_in_progress_per_member(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = _HeldIntake()
    monkeypatch.setattr(avatars_module, "screen_uploads", held)
    files = [("a.png", make_photo(1))]
    first = asyncio.create_task(
        services.avatars.create(7, GUILD, "One", "object", files, consent=True)
    )
    await held.entered.get()
    with pytest.raises(QueueFull, match="already creating"):
        await services.avatars.create(7, GUILD, "Two", "object", files, consent=True)
    other = asyncio.create_task(  # another member is not held up
        services.avatars.create(8, GUILD, "Max", "object", files, consent=True)
    )
    await held.entered.get()
    held.release.set()
    ticket = (await first).job_id
    await other
    # Intake is over, but the encode job has not run: still in progress.
    with pytest.raises(QueueFull, match="still being checked"):
        await services.avatars.create(7, GUILD, "Two", "object", files, consent=True)
    await services.dispatcher.run_job(ticket)
    await services.avatars.create(7, GUILD, "Two", "object", files, consent=True)


async def test_the_process_holds_at_most_max_intakes(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = _HeldIntake()
    monkeypatch.setattr(avatars_module, "screen_uploads", held)
    monkeypatch.setattr(avatars_module, "MAX_INTAKES", 2)
    files = [("a.png", make_photo(1))]
    tasks = [
        asyncio.create_task(services.avatars.create(m, GUILD, "A", "object", files, consent=True))
        for m in (1, 2)
    ]
    for _ in tasks:
        await held.entered.get()
    with pytest.raises(QueueFull, match="busy") as refused:
        await services.avatars.create(3, GUILD, "A", "object", files, consent=True)
    assert refused.value.retry_at is not None
    held.release.set()
    await asyncio.gather(*tasks)
    await services.avatars.create(3, GUILD, "A", "object", files, consent=True)
