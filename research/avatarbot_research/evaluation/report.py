"""An evaluation's files: results.json, results.md and contact_sheet.png.

``contact_sheet`` is a small general helper (labelled rows of captioned cells under column
titles); ``evaluation_sheet`` lays an evaluation out on it: references, baseline, then each
personalizer x strength, one column per prompt and seed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image as PILImage
from PIL import ImageDraw, ImageFont, ImageOps

from avatarbot_research.evaluation.grid import EvalPlan, GridResult, RenderScore

if TYPE_CHECKING:
    from PIL.Image import Image

LABEL_WIDTH = 140
HEADER_HEIGHT = 30
CAPTION_HEIGHT = 14
GAP = 2


@dataclass(frozen=True)
class SheetCell:
    image: Image | None
    caption: str = ""


def contact_sheet(
    rows: Sequence[tuple[str, Sequence[SheetCell]]], columns: Sequence[str], cell: int = 128
) -> Image:
    """One image: a label per row at the left, column titles (lines split on newlines) on top,
    each cell's image fitted in ``cell`` x ``cell`` with its caption beneath."""
    font = ImageFont.load_default()
    count = max([len(columns), *(len(cells) for _, cells in rows), 1])
    width = LABEL_WIDTH + count * (cell + GAP)
    height = HEADER_HEIGHT + len(rows) * (cell + CAPTION_HEIGHT + GAP)
    sheet = PILImage.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    for c, title in enumerate(columns):
        x = LABEL_WIDTH + c * (cell + GAP)
        for line_no, line in enumerate(title.splitlines()[:2]):
            draw.text((x + 2, 2 + 13 * line_no), _fit(draw, line, font, cell - 4), "black", font)
    for r, (label, cells) in enumerate(rows):
        y = HEADER_HEIGHT + r * (cell + CAPTION_HEIGHT + GAP)
        draw.text((4, y + cell // 2 - 6), _fit(draw, label, font, LABEL_WIDTH - 8), "black", font)
        for c, item in enumerate(cells):
            x = LABEL_WIDTH + c * (cell + GAP)
            if item.image is not None:
                thumb = ImageOps.contain(item.image.convert("RGB"), (cell, cell))
                offset = ((cell - thumb.width) // 2, (cell - thumb.height) // 2)
                sheet.paste(thumb, (x + offset[0], y + offset[1]))
            else:
                draw.rectangle((x, y, x + cell - 1, y + cell - 1), outline="#bbbbbb")
            caption = _fit(draw, item.caption, font, cell - 2)
            draw.text((x + 1, y + cell + 1), caption, "#333333", font)
    return sheet


def _fit(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def evaluation_sheet(
    plan: EvalPlan,
    references: Sequence[Image],
    reference_captions: Sequence[str],
    grid: GridResult,
    cell: int = 128,
    unscored: str = "",
) -> Image:
    """The evaluation on ``contact_sheet``: captions give the identity score (``unscored``
    where the metric could not tell, e.g. "no face"), the toy scene and the CLIP text score."""
    columns = [
        f"p{index + 1} seed {seed}\n{prompt}"
        for index, prompt in enumerate(plan.prompts)
        for seed in range(plan.seeds)
    ]
    by_key = {(r.row, r.prompt_index, r.seed): r for r in grid.records}
    shown = [
        SheetCell(image, caption)
        for image, caption in zip(references, reference_captions, strict=True)
    ]
    rows: list[tuple[str, Sequence[SheetCell]]] = [(f"references ({len(references)})", shown)]
    for row in plan.rows:
        cells = []
        for index in range(len(plan.prompts)):
            for seed in range(plan.seeds):
                record = by_key.get((row, index, seed))
                image = grid.thumbnails.get((row, index, seed))
                cells.append(SheetCell(image, _caption(record, unscored)))
        rows.append((row.label, cells))
    return contact_sheet(rows, columns, cell)


def _caption(record: RenderScore | None, unscored: str) -> str:
    if record is None:
        return ""
    parts = []
    if record.identity is not None:
        parts.append(f"id {record.identity:.2f}")
    elif unscored:
        parts.append(unscored)
    if record.scene is not None:
        parts.append(record.scene)
    if record.clip_text is not None:
        parts.append(f"t {record.clip_text:.2f}")
    return " · ".join(parts)


def results_json(
    meta: Mapping[str, Any], grid: GridResult, aggregates: Sequence[Mapping[str, Any]]
) -> str:
    document = {
        **meta,
        "aggregates": list(aggregates),
        "renders": [record.to_json() for record in grid.records],
    }
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def results_markdown(
    meta: Mapping[str, Any], grid: GridResult, aggregates: Sequence[Mapping[str, Any]]
) -> str:
    found = "face found" if meta.get("metric") == "face" else "scored"
    lines = ["# Evaluation", ""]
    noise = " (random weights: the renders are noise, the numbers mean nothing)"
    lines.append(f"- profile: `{meta['profile']}`{noise if meta.get('is_noise') else ''}")
    refs = meta["references"]
    lines.append(f"- {meta['kind']}: {len(refs)} reference photo(s) from `{meta['source']}`")
    if meta.get("metric"):
        lines.append(f"- identity: `{meta['metric']}`: {meta.get('metric_definition') or ''}")
    else:
        lines.append("- identity: not measured")
    clip = meta.get("clip")
    lines.append(f"- CLIP: `{clip}`" if clip else "- CLIP: not measured (pass --clip FOLDER)")
    s = meta["settings"]
    lines.append(
        f"- {len(grid.records)} render(s): {len(s['prompts'])} prompt(s) x {s['seeds']} seed(s) "
        f"(0..{s['seeds'] - 1}), {s['width']}x{s['height']}, {s['steps']} steps, "
        f"guidance {s['guidance']:g}"
    )
    lines += ["", "## Prompts", ""]
    lines += [f"{i + 1}. {_cell(p)}" for i, p in enumerate(s["prompts"])]
    lines += ["", "## Per personalizer and strength", ""]
    header = ["personalizer", "strength", "renders", "identity mean", "identity median", found]
    has_match = any("match_rate" in a for a in aggregates)
    if has_match:
        header.append("same person")
    header += ["CLIP text", "CLIP image"]
    lines += [_row(header), _row(["---"] * len(header))]
    for a in aggregates:
        cells = [
            a["personalizer"],
            "baseline" if a["baseline"] else f"{a['strength']:g}",
            str(a["renders"]),
            _num(a["identity_mean"]),
            _num(a["identity_median"]),
            _pct(a["found_rate"]),
        ]
        if has_match:
            cells.append(_pct(a.get("match_rate")))
        cells += [_num(a["clip_text_mean"]), _num(a["clip_image_mean"])]
        lines.append(_row(cells))
    lines += ["", "## Renders", ""]
    scenes = any(r.scene is not None for r in grid.records)
    header = ["personalizer", "strength", "prompt", "seed", "identity"]
    header += [*(["scene"] if scenes else []), "CLIP text", "CLIP image", "image"]
    lines += [_row(header), _row(["---"] * len(header))]
    unscored = unscored_label(meta.get("metric")) or "–"
    for r in grid.records:
        cells = [
            r.personalizer,
            "baseline" if r.strength is None else f"{r.strength:g}",
            str(r.prompt_index + 1),
            str(r.seed),
            unscored if r.identity is None else _num(r.identity),
            *([r.scene or "–"] if scenes else []),
            _num(r.clip_text),
            _num(r.clip_image),
            f"[png]({r.file})",
        ]
        lines.append(_row(cells))
    return "\n".join(lines) + "\n"


def unscored_label(metric: str | None) -> str:
    """What a render the identity metric could not score shows instead of a number."""
    if metric is None:
        return ""
    return "no face" if metric == "face" else "not found"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def write_outputs(
    out_dir: Path,
    meta: Mapping[str, Any],
    grid: GridResult,
    aggregates: Sequence[Mapping[str, Any]],
    sheet: Image,
) -> list[Path]:
    """Write results.json, results.md and contact_sheet.png; return their paths."""
    paths = [out_dir / "results.json", out_dir / "results.md", out_dir / "contact_sheet.png"]
    paths[0].write_text(results_json(meta, grid, aggregates), encoding="utf-8")
    paths[1].write_text(results_markdown(meta, grid, aggregates), encoding="utf-8")
    sheet.save(paths[2])
    return paths
