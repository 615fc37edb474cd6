"""The admin usage chart (``bot.ui.charts``): an RGB picture for any report, even an empty one."""

from __future__ import annotations

import io
from datetime import date, timedelta

from PIL import Image, ImageChops

from bot.services.results import UsageRow
from bot.ui.charts import (
    BACKGROUND,
    ERASED_COLOUR,
    HEIGHT,
    OTHERS_COLOUR,
    PALETTE,
    WIDTH,
    png_bytes,
    usage_chart,
)

END = date(2026, 3, 10)


def names(user_id: int) -> str:
    return f"member {user_id}"


def colours(image: Image.Image) -> set[object]:
    return {c for _, c in image.getcolors(maxcolors=WIDTH * HEIGHT) or []}


def test_draws_one_colour_per_member_and_erased() -> None:
    rows = [
        UsageRow(END, 1, reserved=3, refunded=0, granted=0),
        UsageRow(END - timedelta(days=1), 2, reserved=2, refunded=1, granted=5),
        UsageRow(END, None, reserved=4, refunded=0, granted=0),
    ]
    image = usage_chart(rows, 7, END, names)
    assert image.size == (WIDTH, HEIGHT) and image.mode == "RGB"
    shown = colours(image)
    assert {PALETTE[0], PALETTE[1], ERASED_COLOUR} <= shown
    assert OTHERS_COLOUR not in shown  # two members: no "others"

    empty = usage_chart([], 7, END, names)
    assert ImageChops.difference(image, empty).getbbox() is not None  # the bars differ


def test_members_past_the_top_are_summed_as_others() -> None:
    rows = [UsageRow(END, uid, reserved=uid, refunded=0, granted=0) for uid in range(1, 6)]
    shown = colours(usage_chart(rows, 3, END, names, top=2))
    assert {PALETTE[0], PALETTE[1], OTHERS_COLOUR} <= shown
    assert PALETTE[2] not in shown


def test_empty_data_and_old_rows_still_make_a_picture() -> None:
    old = [UsageRow(END - timedelta(days=30), 1, reserved=9, refunded=0, granted=0)]
    for rows in ([], old):
        image = usage_chart(rows, 1, END, names)
        assert image.size == (WIDTH, HEIGHT)
        assert PALETTE[0] not in colours(image)
        assert image.getpixel((5, HEIGHT // 2)) == BACKGROUND
    data = png_bytes(usage_chart([], 90, END, names))
    with Image.open(io.BytesIO(data)) as decoded:
        assert decoded.format == "PNG" and decoded.size == (WIDTH, HEIGHT)


def test_names_come_from_the_caller_and_long_ones_are_cut() -> None:
    asked: list[int] = []

    def name_of(user_id: int) -> str:
        asked.append(user_id)
        return "A very long display name indeed"

    usage_chart([UsageRow(END, 42, reserved=1, refunded=0, granted=0)], 7, END, name_of)
    assert asked == [42]
