"""A synthetic subject world small enough to train a diffusion model on a CPU.

A subject's identity is a shape, a body colour, an accent colour and a pattern: details no
caption ever names, so a model can only reproduce them from the reference photos. What text
controls is the scene: a place (each a visually distinct background), and optionally the
subject's position and size. Renders jitter position, size, rotation and colour so that a model
has to generalise rather than copy pixels.

Everything is numpy/PIL and deterministic given the seeds; the colour constants are shared with
``metrics.py``, which measures identity and place back from pixels.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

RGB = tuple[int, int, int]

SHAPES = ("circle", "square", "triangle", "diamond", "star", "ring")
PATTERNS = ("rim", "spot", "stripes", "dots")
# Saturated and far (> 100 in RGB) from every background colour below, and no colour is the
# blend of two others (orange would be red + yellow), so antialiased pattern edges do not read
# as a third colour.
COLOURS: dict[str, RGB] = {
    "red": (215, 35, 35),
    "yellow": (240, 210, 30),
    "magenta": (210, 45, 190),
    "blue": (40, 70, 215),
    "cyan": (30, 200, 205),
}
_PAIRS = [(b, a) for b in COLOURS for a in COLOURS if a != b]
N_SUBJECTS = len(SHAPES) * len(PATTERNS) * len(_PAIRS)  # 480

# Each place's colours (the metrics classify places by them) and how captions say it.
PLACES: dict[str, tuple[str, tuple[RGB, ...]]] = {
    "beach": ("on the beach", ((135, 190, 235), (225, 200, 150))),  # sky, sand
    "snow": ("in the snow", ((200, 212, 228), (246, 247, 250))),  # pale sky, snow
    "forest": ("in a forest", ((25, 80, 35), (55, 130, 55), (95, 65, 40))),  # leaves, moss, bark
    "night": ("at night", ((15, 20, 55), (35, 35, 50), (235, 235, 210))),  # sky, ground, stars
    "city": ("in the city", ((180, 183, 190), (100, 103, 110), (135, 138, 145), (75, 75, 80))),
}
# Plain backgrounds of the reference photos, as a member would shoot a toy on a table or wall.
PLAIN_BACKGROUNDS: tuple[RGB, ...] = (
    (238, 238, 238), (200, 200, 200), (226, 214, 192), (202, 214, 234), (206, 226, 206),
    (168, 142, 112),
)  # fmt: skip
POSITIONS = ("left", "center", "right")
SIZES = ("small", "large")
_POSITION_WORDS = {"left": "on the left", "center": "in the middle", "right": "on the right"}
# Subject area as a fraction of the frame: inside the trainer's 0.1–0.7 filter with margin.
_AREA = {"small": (0.11, 0.15), "large": (0.22, 0.28)}
_ANCHOR_X = {"left": 0.27, "center": 0.5, "right": 0.73}
_SUPERSAMPLE = 4  # drawn 4× larger then box-filtered: antialiased edges, like photographs
_SPRITE = 256  # side of a subject's canonical sprite


@dataclass(frozen=True)
class Subject:
    id: int
    shape: str
    body: str
    accent: str
    pattern: str


@dataclass(frozen=True)
class Scene:
    """What text controls: the place (always captioned), the subject's position and size."""

    place: str
    position: str = "center"
    size: str = "large"

    def __post_init__(self) -> None:
        for value, known in ((self.place, PLACES), (self.position, POSITIONS), (self.size, SIZES)):
            if value not in known:
                raise ValueError(f"unknown scene value {value!r} (known: {', '.join(known)})")


@functools.cache
def _catalogue() -> tuple[Subject, ...]:
    # A fixed shuffle (Fisher–Yates on random(), whose sequence Python guarantees across
    # versions) so that any prefix of ids mixes shapes, colours and patterns.
    combos = [(s, b, a, p) for s in SHAPES for (b, a) in _PAIRS for p in PATTERNS]
    rng = random.Random(20240415)
    for i in range(len(combos) - 1, 0, -1):
        j = int(rng.random() * (i + 1))
        combos[i], combos[j] = combos[j], combos[i]
    return tuple(Subject(i, *c) for i, c in enumerate(combos))


def subject(subject_id: int) -> Subject:
    if not 0 <= subject_id < N_SUBJECTS:
        raise ValueError(f"subject id {subject_id} is outside 0..{N_SUBJECTS - 1}")
    return _catalogue()[subject_id]


def split_subjects(n_total: int, n_heldout: int, seed: int) -> tuple[list[int], list[int]]:
    """Ids 0..n_total-1 split into (training, held-out) subjects, disjoint, both sorted."""
    if not 0 <= n_heldout < n_total <= N_SUBJECTS:
        raise ValueError(f"need 0 <= n_heldout < n_total <= {N_SUBJECTS}")
    ids = np.random.default_rng(seed).permutation(n_total)
    return sorted(int(i) for i in ids[n_heldout:]), sorted(int(i) for i in ids[:n_heldout])


# What no training stage ever sees (issue 27): one whole shape and two whole colour pairs (in
# either order). A held-out subject has the unseen shape, an unseen pair, or both, so "held
# out" means new to the model, not merely a new combination of things it was trained on.
UNSEEN_SHAPES: tuple[str, ...] = ("diamond",)
UNSEEN_PAIRS: tuple[frozenset[str], ...] = (
    frozenset({"blue", "yellow"}),
    frozenset({"red", "cyan"}),
)
NEW_PAIR, NEW_SHAPE, NEW_BOTH = "new colour pair", "new shape", "new shape and pair"
UNSEEN_GROUPS = (NEW_PAIR, NEW_SHAPE, NEW_BOTH)


def unseen_group(subj: Subject) -> str | None:
    """Which unseen part a subject has (``UNSEEN_GROUPS``), or None if training may use it."""
    shape = subj.shape in UNSEEN_SHAPES
    pair = frozenset({subj.body, subj.accent}) in UNSEEN_PAIRS
    if shape and pair:
        return NEW_BOTH
    return NEW_SHAPE if shape else NEW_PAIR if pair else None


def unseen_split(n_train: int, n_heldout: int, seed: int) -> tuple[list[int], list[int]]:
    """(training, held-out) subject ids, both sorted: the first ``n_train`` subjects of the
    catalogue that have no unseen part, and ``n_heldout`` subjects drawn (seeded) from the
    unseen groups in turn (new pair, new shape, both), so every group is represented."""
    catalogue = _catalogue()
    seen = [s.id for s in catalogue if unseen_group(s) is None]
    if not 1 <= n_train <= len(seen):
        raise ValueError(f"need 1 <= n_train <= {len(seen)} (subjects without an unseen part)")
    pools = {g: [s.id for s in catalogue if unseen_group(s) == g] for g in UNSEEN_GROUPS}
    if not 0 <= n_heldout <= sum(map(len, pools.values())):
        raise ValueError("n_heldout is more than the unseen subjects")
    rng = np.random.default_rng(seed)
    for ids in pools.values():
        rng.shuffle(ids)
    heldout: list[int] = []
    while len(heldout) < n_heldout:
        for group in UNSEEN_GROUPS:
            if pools[group] and len(heldout) < n_heldout:
                heldout.append(pools[group].pop())
    return sorted(seen[:n_train]), sorted(heldout)


def random_scene(rng: np.random.Generator) -> Scene:
    return Scene(str(rng.choice(list(PLACES))), str(rng.choice(POSITIONS)), str(rng.choice(SIZES)))


def caption(scene: Scene, *, position: bool = True, size: bool = True) -> str:
    """The scene in words, e.g. "a photo of a small toy on the left in the snow".

    The place always, position and size when asked; never a colour, shape or pattern. "toy" is
    one of the object kind's synonyms, so the trainer makes it "sks object".
    """
    words = ["a photo of a"]
    if size:
        words.append(scene.size)
    words.append("toy")
    if position:
        words.append(_POSITION_WORDS[scene.position])
    words.append(PLACES[scene.place][0])
    return " ".join(words)


def _jitter(colour: RGB, rng: np.random.Generator, amount: int) -> RGB:
    r, g, b = (np.asarray(colour) + rng.integers(-amount, amount + 1, 3)).clip(0, 255)
    return int(r), int(g), int(b)


def background(place: str, side: int, rng: np.random.Generator) -> Image.Image:
    """A place drawn at ``side`` pixels: a sky and a ground, plus each place's furniture."""
    colours = [_jitter(c, rng, 8) for c in PLACES[place][1]]
    image = Image.new("RGB", (side, side), colours[0])
    draw = ImageDraw.Draw(image)
    horizon = int(side * rng.uniform(0.5, 0.68))
    u = side / 100
    if place == "forest":
        for _ in range(int(rng.integers(3, 6))):  # trunks behind the mossy ground
            x = rng.uniform(0, side)
            draw.rectangle((x, 0, x + rng.uniform(4, 8) * u, horizon), fill=colours[2])
    elif place == "night":
        for _ in range(int(rng.integers(6, 13))):  # stars
            x, y, r = rng.uniform(0, side), rng.uniform(0, horizon * 0.8), max(1.5, 1.2 * u)
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colours[2])
    elif place == "city":
        x = -rng.uniform(0, 10) * u
        while x < side:  # a skyline of two greys
            w = rng.uniform(12, 25) * u
            top = horizon - rng.uniform(20, 50) * u
            draw.rectangle((x, top, x + w, horizon), fill=colours[1 + int(rng.integers(2))])
            x += w + rng.uniform(0, 6) * u
        colours[1] = colours[3]  # the street
    draw.rectangle((0, horizon, side, side), fill=colours[1])
    return image


def _erode(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:] &= mask[:-1]
    out[:-1] &= mask[1:]
    out[:, 1:] &= mask[:, :-1]
    out[:, :-1] &= mask[:, 1:]
    return out


def _shape_mask(shape: str, side: int) -> np.ndarray:
    image = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(image)
    c, r = side / 2, side / 2 - 1
    if shape in ("circle", "ring"):
        draw.ellipse((c - r, c - r, c + r, c + r), fill=255)
        if shape == "ring":
            h = 0.45 * r
            draw.ellipse((c - h, c - h, c + h, c + h), fill=0)
    elif shape == "square":
        s = 0.86 * r
        draw.rectangle((c - s, c - s, c + s, c + s), fill=255)
    elif shape == "triangle":
        draw.polygon([(c, c - r), (c + r, c + 0.75 * r), (c - r, c + 0.75 * r)], fill=255)
    elif shape == "diamond":  # taller than wide: a rotated square would be a square
        draw.polygon([(c, c - r), (c + 0.7 * r, c), (c, c + r), (c - 0.7 * r, c)], fill=255)
    elif shape == "star":
        angles = np.pi * (np.arange(10) / 5 - 0.5)
        radii = np.where(np.arange(10) % 2 == 0, r, 0.55 * r)
        xs, ys = c + radii * np.cos(angles), c + 0.1 * r + radii * np.sin(angles)
        draw.polygon(list(zip(xs.tolist(), ys.tolist(), strict=True)), fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return np.asarray(image) > 127


@functools.cache
def _sprite(subj: Subject) -> tuple[Image.Image, float]:
    """The subject drawn once, upright, on ``_SPRITE`` pixels (RGBA), and its area fraction.

    Patterns are defined on the shape itself, so every shape carries every pattern: the rim is
    the outer 30 % of the distance to the shape's spine, the spot the inner 45 %.
    """
    mask = _shape_mask(subj.shape, _SPRITE)
    depth = np.zeros(mask.shape, np.int32)
    layer = mask
    while layer.any():  # distance to the background, one erosion per pixel
        depth += layer
        layer = _erode(layer)
    rel = depth / max(1, depth.max())
    yy, xx = np.mgrid[0:_SPRITE, 0:_SPRITE] * (6 / _SPRITE)  # pattern period: a third of the side
    if subj.pattern == "rim":
        accent = rel <= 0.3
    elif subj.pattern == "spot":
        accent = rel >= 0.55
    elif subj.pattern == "stripes":
        accent = (yy % 2) < 0.7
    else:  # dots
        accent = (xx % 2 - 1) ** 2 + (yy % 2 - 1) ** 2 < 0.55**2
    rgba = np.zeros((_SPRITE, _SPRITE, 4), np.uint8)
    rgba[..., :3] = np.where(accent[..., None], COLOURS[subj.accent], COLOURS[subj.body])
    rgba[..., 3] = mask * 255
    return Image.fromarray(rgba, "RGBA"), float(mask.mean())


def _place_subject(
    canvas: Image.Image, subj: Subject, area: float, anchor: tuple[float, float], angle: float
) -> Image.Image:
    """Paste the subject (``area`` of the canvas) centred near ``anchor``; returns its mask."""
    side = canvas.size[0]
    sprite, fill = _sprite(subj)
    s = max(4, round(side * np.sqrt(area / fill)))
    sp = sprite.resize((s, s), Image.Resampling.BILINEAR).rotate(
        angle, Image.Resampling.NEAREST, expand=True
    )
    alpha = sp.getchannel("A").point(lambda v: 255 if v >= 128 else 0)
    ys, xs = np.nonzero(np.asarray(alpha))
    w, h = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    # Keep the whole subject inside the frame: a clipped shape would change its identity.
    cx = float(np.clip(anchor[0] * side, w / 2 + 2, side - w / 2 - 2))
    cy = float(np.clip(anchor[1] * side, h / 2 + 2, side - h / 2 - 2))
    x0, y0 = round(cx - (xs.min() + xs.max()) / 2), round(cy - (ys.min() + ys.max()) / 2)
    canvas.paste(sp.convert("RGB"), (x0, y0), alpha)
    mask = Image.new("L", canvas.size, 0)
    mask.paste(alpha, (x0, y0), alpha)
    return mask


def _finish(
    canvas: Image.Image, mask: Image.Image, rng: np.random.Generator
) -> tuple[Image.Image, Image.Image]:
    """Downsample (antialiasing), then lighting and sensor noise."""
    pixels = np.asarray(canvas.reduce(_SUPERSAMPLE), np.float64)
    image = pixels * rng.uniform(0.94, 1.06, 3) + rng.normal(0, 3, pixels.shape)
    small = np.asarray(mask.reduce(_SUPERSAMPLE)) >= 128
    return (
        Image.fromarray(image.round().clip(0, 255).astype(np.uint8), "RGB"),
        Image.fromarray(small.astype(np.uint8) * 255, "L"),
    )


def render_scene(
    subj: Subject, scene: Scene, size: int = 64, rng: np.random.Generator | None = None
) -> tuple[Image.Image, Image.Image]:
    """The subject in the scene: (RGB image, L mask with 255 on the subject), ``size``²."""
    rng = rng if rng is not None else np.random.default_rng()
    canvas = background(scene.place, size * _SUPERSAMPLE, rng)
    anchor = (_ANCHOR_X[scene.position] + rng.uniform(-0.04, 0.04), rng.uniform(0.5, 0.6))
    area = rng.uniform(*_AREA[scene.size])
    mask = _place_subject(canvas, subj, area, anchor, rng.uniform(-15, 15))
    return _finish(canvas, mask, rng)


def reference_photos(subj: Subject, n: int, size: int = 64, seed: int = 0) -> list[Image.Image]:
    """``n`` photos of the subject alone on plain, varied backgrounds (unmasked, as uploaded)."""
    return [image for image, _ in reference_shots(subj, n, size, seed)]


def reference_shots(
    subj: Subject, n: int, size: int = 64, seed: int = 0
) -> list[tuple[Image.Image, Image.Image]]:
    """``reference_photos`` with their subject masks (L, 255 on the subject): what a perfect
    segmenter would give, for measuring what masking the references changes."""
    rng = np.random.default_rng([seed, subj.id])
    shots = []
    for _ in range(n):
        side = size * _SUPERSAMPLE
        top = _jitter(PLAIN_BACKGROUNDS[int(rng.integers(len(PLAIN_BACKGROUNDS)))], rng, 6)
        # A soft vertical shading, as on a wall or table under a lamp.
        ramp = np.linspace(1.0, rng.uniform(0.88, 1.0), side)[:, None, None]
        canvas = Image.fromarray((np.full((side, side, 3), top) * ramp).astype(np.uint8), "RGB")
        anchor = (0.5 + rng.uniform(-0.06, 0.06), 0.5 + rng.uniform(-0.06, 0.06))
        mask = _place_subject(canvas, subj, rng.uniform(0.18, 0.3), anchor, rng.uniform(-15, 15))
        shots.append(_finish(canvas, mask, rng))
    return shots


def subjects(ids: Sequence[int]) -> list[Subject]:
    """The subjects of these ids (e.g. one side of ``split_subjects``)."""
    return [subject(i) for i in ids]
