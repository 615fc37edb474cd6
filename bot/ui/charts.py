"""Pictures of numbers for Discord messages, drawn with Pillow (no plotting library).

``usage_chart`` draws an admin usage report as stacked bars: renders per UTC day, one colour
per member (the busiest few; the rest as "others", members who used forget-me as "erased").
Sized to stay legible when Discord shrinks an attachment to its embed width (~550 px).
Discord cannot render mentions inside an image, so the caller names members (display names,
never pings).
"""

from __future__ import annotations

import io
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import date, timedelta

from PIL import Image, ImageDraw, ImageFont

from bot.services.results import UsageRow

WIDTH, HEIGHT = 960, 480
BACKGROUND = (49, 51, 56)  # Discord's dark theme, so the chart sits in the message
FOREGROUND = (219, 222, 225)
GRID = (78, 80, 88)
PALETTE = (
    (88, 101, 242),
    (87, 242, 135),
    (254, 231, 92),
    (235, 69, 158),
    (237, 66, 69),
    (69, 196, 237),
    (250, 166, 26),
    (163, 120, 255),
)
OTHERS_COLOUR = (148, 155, 164)
ERASED_COLOUR = (96, 100, 108)
OTHERS, ERASED = "others", "erased"
MAX_LABEL = 18

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


def _font(size: int) -> Font:
    return ImageFont.load_default(size=size)


def renders(row: UsageRow) -> int:
    """Renders a member actually got that day (taken minus given back; grants are not renders)."""
    return max(0, row.reserved - row.refunded)


def _nice_step(top: int, ticks: int = 5) -> int:
    raw = max(1.0, top / ticks)
    magnitude = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if factor * magnitude >= raw:
            return int(factor * magnitude)
    return int(10 * magnitude)


def _short(label: str) -> str:
    return label if len(label) <= MAX_LABEL else label[: MAX_LABEL - 1] + "…"


def usage_chart(
    rows: Sequence[UsageRow],
    days: int,
    end: date,
    name_of: Callable[[int], str],
    *,
    top: int = 6,
    title: str | None = None,
) -> Image.Image:
    """Stacked bars of renders per day for the ``days`` UTC days ending with ``end``.

    Members are the ``top`` busiest (named by ``name_of``); the rest are summed as "others";
    rows without a member id (erased members) as "erased". An RGB image, also for no data.
    """
    days = max(1, days)
    first = end - timedelta(days=days - 1)
    per_series: dict[int | None, dict[date, int]] = defaultdict(lambda: defaultdict(int))
    for row in rows:
        if first <= row.day <= end and renders(row) > 0:
            per_series[row.user_id][row.day] += renders(row)
    totals = {key: sum(v.values()) for key, v in per_series.items()}
    members = sorted((k for k in totals if k is not None), key=lambda k: (-totals[k], k))
    shown, rest = members[:top], members[top:]

    series: list[tuple[str, tuple[int, int, int], dict[date, int]]] = []
    for index, uid in enumerate(shown):
        series.append((_short(name_of(uid)), PALETTE[index % len(PALETTE)], per_series[uid]))
    if rest:
        others: dict[date, int] = defaultdict(int)
        for uid in rest:
            for day, n in per_series[uid].items():
                others[day] += n
        series.append((f"{OTHERS} ({len(rest)})", OTHERS_COLOUR, others))
    if None in per_series:
        series.append((ERASED, ERASED_COLOUR, per_series[None]))

    image = Image.new("RGB", (WIDTH, HEIGHT), BACKGROUND)
    draw = ImageDraw.Draw(image)
    title_font, font, small = _font(24), _font(18), _font(16)
    draw.text(
        (20, 14), title or f"Renders per day (UTC), last {days} day(s)", FOREGROUND, title_font
    )

    legend_width = 260
    left, top_y, right, bottom = 64, 60, WIDTH - legend_width - 16, HEIGHT - 56
    day_totals = [sum(s[2].get(first + timedelta(d), 0) for s in series) for d in range(days)]
    peak = max(day_totals, default=0)
    step = _nice_step(max(peak, 1))
    y_max = max(step, math.ceil(max(peak, 1) / step) * step)

    def y_of(value: float) -> float:
        return bottom - (bottom - top_y) * value / y_max

    for tick in range(0, y_max + 1, step):
        y = y_of(tick)
        draw.line([(left, y), (right, y)], GRID, 1)
        draw.text((left - 8, y), str(tick), FOREGROUND, small, anchor="rm")
    draw.line([(left, top_y), (left, bottom)], FOREGROUND, 2)
    draw.line([(left, bottom), (right, bottom)], FOREGROUND, 2)

    slot = (right - left) / days
    bar = max(1.0, slot * 0.7)
    label_every = max(1, math.ceil(days / max(1, int((right - left) // 64))))
    for d in range(days):
        day = first + timedelta(d)
        x0 = left + d * slot + (slot - bar) / 2
        base = 0
        for _, colour, values in series:
            n = values.get(day, 0)
            if n:
                draw.rectangle([x0, y_of(base + n), x0 + bar, y_of(base)], fill=colour)
                base += n
        if (days - 1 - d) % label_every == 0:  # always label the last day (today)
            draw.text(
                (left + (d + 0.5) * slot, bottom + 8),
                day.strftime("%m-%d"),
                FOREGROUND,
                small,
                anchor="mt",
            )
    draw.text(
        ((left + right) / 2, HEIGHT - 8), "day (month-day, UTC)", FOREGROUND, small, anchor="mb"
    )

    if not series:
        draw.text(
            ((left + right) / 2, (top_y + bottom) / 2), "No renders", FOREGROUND, font, anchor="mm"
        )
    legend_x, legend_y = right + 24, top_y
    for label, colour, values in series:
        draw.rectangle([legend_x, legend_y + 3, legend_x + 16, legend_y + 19], fill=colour)
        total = sum(values.values())
        draw.text((legend_x + 24, legend_y), f"{label}: {total}", FOREGROUND, font)
        legend_y += 28
    return image


def png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG", optimize=True)
    return out.getvalue()
