"""Identity and text control measured from the toy world's pixels, without learned weights.

- ``segment``: the subject is whatever is nearer to a subject colour than to any background
  colour, the world's (places, plain reference backgrounds) or this image's border's; gaps are
  closed, the largest blob kept and its small pockets filled.
- ``ToyIdentity`` / ``identity_components``: the world's identity is a shape, two colours and a
  pattern, measured as three components each from its own features only (issue 27): colour
  (palette histogram), pattern (where the two main colours are, whatever they are: layers,
  areas, blobs, stripe anisotropy) and shape (rotation-invariant outline descriptors).
- ``scene_class``: the place whose sky and ground colours are nearest to the image's.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import astuple, dataclass

import numpy as np
from PIL import Image

from avatarbot_research.toyworld.world import COLOURS, PLACES, PLAIN_BACKGROUNDS, background

_SUBJECT = np.array(list(COLOURS.values()), np.float32)  # [K, 3]
_BG_COLOURS = [c for _, colours in PLACES.values() for c in colours] + list(PLAIN_BACKGROUNDS)
_BACKGROUND = np.array(_BG_COLOURS, np.float32)  # [B, 3]
_PLACE_NAMES = list(PLACES)
_MIN_SUBJECT = 0.02  # of the frame: less than this is not a subject, it is a few stray pixels
_MAX_POCKET = 0.08  # of the subject's area: enclosed background smaller than this is filled
_SOFT = 25.0  # RGB distance scale of the soft palette assignment


def _rgb(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), np.float32)


def _sq_dist(pixels: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Squared RGB distance of each pixel [..., 3] to each colour [C, 3] → [..., C]."""
    return ((pixels[..., None, :] - colours) ** 2).sum(-1)


def _labels(mask: np.ndarray) -> np.ndarray:
    """Connected components (4-neighbourhood) by min-label propagation; -1 off the mask."""
    h, w = mask.shape
    big = h * w
    padded = np.full((h + 2, w + 2), big, np.int32)  # a frame of "nothing" around the image
    labels = padded[1:-1, 1:-1]
    labels[mask] = np.arange(big, dtype=np.int32).reshape(h, w)[mask]
    while True:
        nxt = np.minimum(
            np.minimum(padded[:-2, 1:-1], padded[2:, 1:-1]),
            np.minimum(padded[1:-1, :-2], padded[1:-1, 2:]),
        )
        nxt = np.where(mask, np.minimum(nxt, labels), big)
        if np.array_equal(nxt, labels):
            return np.where(mask, labels, -1)
        labels[...] = nxt


def _border_colours(rgb: np.ndarray) -> np.ndarray:
    """The frame border's common colours [C, 3]: the background of this very image, which a
    model may have drawn in colours the world never uses. Subject-like ones are left out (a
    subject may touch the frame)."""
    border = np.concatenate([rgb[:2].reshape(-1, 3), rgb[-2:].reshape(-1, 3),
                             rgb[:, :2].reshape(-1, 3), rgb[:, -2:].reshape(-1, 3)])  # fmt: skip
    bins = (border // 32).astype(np.int32) @ np.array([64, 8, 1])
    ids, counts = np.unique(bins, return_counts=True)
    common = [border[bins == i].mean(0) for i in ids[counts >= 0.05 * len(border)]]
    if not common:
        return np.zeros((0, 3), np.float32)
    colours = np.array(common, np.float32)
    keep = _sq_dist(colours, _SUBJECT).min(-1) > _sq_dist(colours, _BACKGROUND).min(-1)
    return colours[keep]


def subject_pixels(image: Image.Image) -> np.ndarray:
    """Pixels nearer to a subject colour than to any background colour, the world's or this
    image's border's (boolean [H, W])."""
    rgb = _rgb(image)
    background = np.concatenate([_BACKGROUND, _border_colours(rgb)])
    return _sq_dist(rgb, _SUBJECT).min(-1) < _sq_dist(rgb, background).min(-1)


def _dilate(mask: np.ndarray) -> np.ndarray:
    p = np.pad(mask, 1)
    return mask | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]


def _erode(mask: np.ndarray) -> np.ndarray:
    return ~_dilate(~mask)


def segment(image: Image.Image) -> np.ndarray:
    """The subject's mask (boolean [H, W]); all False when nothing subject-like is found."""
    # Closing first: where two subject colours meet, antialiasing (or a model's blur) makes a
    # thin line of blends that may look like a background colour and cut the subject apart.
    candidates = _erode(_dilate(subject_pixels(image)))
    labels = _labels(candidates)
    if not candidates.any():
        return candidates
    ids, counts = np.unique(labels[candidates], return_counts=True)
    mask = labels == ids[counts.argmax()]
    if mask.mean() < _MIN_SUBJECT:
        return np.zeros_like(mask)
    # Small enclosed pockets are subject pixels read as background (a blend of complementary
    # colours is grey); a ring's hole is far larger than this.
    pockets = _holes(mask)
    ids, sizes = np.unique(pockets[pockets >= 0], return_counts=True)
    return mask | np.isin(pockets, ids[sizes < _MAX_POCKET * mask.sum()])


def _holes(mask: np.ndarray) -> np.ndarray:
    """Labels of the background pockets the mask encloses (not touching the frame), else -1."""
    outside = _labels(~mask)
    border = np.unique(np.concatenate([outside[0], outside[-1], outside[:, 0], outside[:, -1]]))
    return np.where(np.isin(outside, border), -1, outside)


def _depth(mask: np.ndarray) -> np.ndarray:
    """Pixels to the nearest non-subject pixel (4-neighbourhood), 0 off the mask."""
    depth = np.zeros(mask.shape, np.int32)
    layer = mask
    while layer.any():
        depth += layer
        p = np.pad(layer, 1)
        layer = layer & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return depth


def _histogram(weights: np.ndarray, where: np.ndarray) -> np.ndarray:
    total = weights[where].sum(0)
    return total / total.sum() if total.sum() > 0 else np.full(len(_SUBJECT), 1 / len(_SUBJECT))


@dataclass(frozen=True)
class ToyFeatures:
    colours: np.ndarray  # palette histogram [K] over the whole subject
    pattern: np.ndarray  # colour-agnostic layout of its two colours (``_pattern_features``)
    shape: np.ndarray  # scale- and rotation-invariant moments, roundness, hole


def _shape_features(mask: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Hu's first three moment invariants, how round the outline is, and the hole's area."""
    ys, xs = np.nonzero(mask)
    n = len(xs)
    dx, dy = xs - xs.mean(), ys - ys.mean()

    def eta(p: int, q: int) -> float:
        return float((dx**p * dy**q).sum() / n ** (1 + (p + q) / 2))

    h1 = eta(2, 0) + eta(0, 2)  # spread: a ring's mass is far from its centre
    h2 = (eta(2, 0) - eta(0, 2)) ** 2 + 4 * eta(1, 1) ** 2  # elongation: the diamond
    h3 = (eta(3, 0) - 3 * eta(1, 2)) ** 2 + (3 * eta(2, 1) - eta(0, 3)) ** 2  # skew: the triangle
    # Outline distances to the centroid vary little on a circle, more on a square, a lot on a
    # star (arms and notches).
    edge = depth == 1
    radius = np.hypot(np.nonzero(edge)[1] - xs.mean(), np.nonzero(edge)[0] - ys.mean())
    roundness = float(radius.std() / max(radius.mean(), 1e-6))
    holes = float((_holes(mask) >= 0).sum()) / n  # a ring's middle
    return np.array([h1, np.sqrt(h2), np.sqrt(h3), roundness, holes])


_SECOND_COLOUR = 0.05  # of the subject: less of a second palette colour is noise, not a pattern
_MIN_BLOB = 3  # pixels: a smaller patch of one colour is noise or a blend, not a dot
_ONE_COLOUR = np.array([1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0])  # no second colour: no pattern


def _swap(pattern: np.ndarray) -> np.ndarray:
    """The same layout described from the other colour's side."""
    shares, anisotropy, (mine, theirs) = pattern[:4], pattern[4], pattern[5:]
    return np.array([*(1 - shares), anisotropy, theirs, mine])


def _pattern_features(
    d2: np.ndarray, weights: np.ndarray, mask: np.ndarray, depth: np.ndarray
) -> np.ndarray:
    """Where the subject's two main colours are, whatever they are, from the side of one of
    them (which one is arbitrary: ``pattern_similarity`` compares both ways): its share of the
    outer layer, of the middle layer, of the core and of the whole subject, the anisotropy of
    colour changes, and how many blobs each colour makes (log2(1 + n)).

    Rim: one colour owns the outer layer, the other the middle and core (about half the area
    each). Spot: one colour owns the outer and middle layers, the other is one small blob in
    the core. Stripes: changes run one way, each colour in a few bands. Dots: one colour in
    many small blobs, changes in both directions. One colour only: ``_ONE_COLOUR``.
    """
    histogram = weights[mask].sum(0)
    first, second = np.argsort(histogram)[::-1][:2]
    if histogram[second] < _SECOND_COLOUR * histogram.sum():
        return _ONE_COLOUR.copy()
    # Each pixel as the nearer of the two colours, kept when clearly nearer (blends skipped).
    near, far = d2[..., first], d2[..., second]
    is_first = near < far
    ratio = np.sqrt(np.minimum(near, far) / np.maximum(np.maximum(near, far), 1e-6))
    rel = depth / depth.max()
    known = (depth >= (2 if depth.max() >= 4 else 1)) & (ratio < 0.7)  # outermost: blended
    layers = (rel <= 0.35, (rel > 0.35) & (rel < 0.55), rel >= 0.55, mask)
    shares = [float(is_first[known & w].mean()) if (known & w).any() else 0.5 for w in layers]
    label = np.where(known, is_first.astype(np.int32), -1)
    changes = []
    for a, b in ((label[:, 2:], label[:, :-2]), (label[2:], label[:-2])):
        both = (a >= 0) & (b >= 0)
        changes.append(float((a != b)[both].mean()) if both.any() else 0.0)
    tx, ty = changes
    # Blobs over the whole subject, the outermost layer included (a thin rim lives there).
    loose = mask & (ratio < 0.85)

    def blobs(where: np.ndarray) -> float:
        if not where.any():
            return 0.0
        _, sizes = np.unique(_labels(where)[where], return_counts=True)
        return float(np.log2(1 + (sizes >= _MIN_BLOB).sum()))

    anisotropy = abs(tx - ty) / (tx + ty + 0.02)
    return np.array([*shares, anisotropy, blobs(loose & is_first), blobs(loose & ~is_first)])


def identity_features(image: Image.Image) -> ToyFeatures | None:
    """The subject's identity statistics, or None when no subject is found."""
    mask = segment(image)
    if not mask.any():
        return None
    d2 = _sq_dist(_rgb(image), _SUBJECT)
    soft = np.exp(-(d2 - d2.min(-1, keepdims=True)) / (2 * _SOFT**2))
    soft /= soft.sum(-1, keepdims=True)
    # A pixel is clearly one palette colour when its nearest is much nearer than the second
    # nearest; a blend of two (an edge, or a model's blur) sits halfway and is discounted.
    # Relative, so that a model's colour cast does not discount whole subjects.
    first, second = np.sqrt(np.sort(d2, -1)[..., :2]).transpose(2, 0, 1)
    clear = np.clip((0.7 - first / np.maximum(second, 1e-6)) / 0.4, 0, 1)
    weights = soft * clear[..., None]
    depth = _depth(mask)
    return ToyFeatures(
        colours=_histogram(weights, mask),
        pattern=_pattern_features(d2, weights, mask, depth),
        shape=_shape_features(mask, depth),
    )


# Per-feature scales of the shape descriptors (h1, √h2, √h3, roundness, holes): about the
# smallest difference between two shapes, measured on the world's renders.
_SHAPE_SCALE = np.array([0.03, 0.02, 0.02, 0.08, 0.15])
# Per-feature scales of the pattern descriptors (four shares, anisotropy, two blob counts):
# chosen on the world's renders so that the same pattern in other colours and shapes scores
# about 0.8 and another pattern under 0.05 (pattern_similarity).
_PATTERN_SCALE = np.array([0.3, 0.5, 0.5, 0.24, 0.5, 1.0, 1.0])


def _gaussian(a: np.ndarray, b: np.ndarray, scale: np.ndarray) -> float:
    return float(np.exp(-0.5 * np.square((a - b) / scale).sum()))


def shape_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """In [0, 1]: how alike two outlines' descriptors are."""
    return _gaussian(a, b, _SHAPE_SCALE)


def pattern_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """In [0, 1]: the two layouts compared both ways round (which colour is which is not
    part of the pattern), the better kept."""
    return max(_gaussian(a, b, _PATTERN_SCALE), _gaussian(a, _swap(b), _PATTERN_SCALE))


WEIGHTS = {"colour": 0.5, "pattern": 0.25, "shape": 0.25}  # the overall score's, since issue 15


@dataclass(frozen=True)
class Components:
    """Identity similarity in parts, each in [0, 1] and each from its own features only:
    colour (palette histograms), pattern (where the two colours are, whatever they are) and
    shape (outline); ``overall`` is their weighted mean (``WEIGHTS``)."""

    colour: float
    pattern: float
    shape: float
    overall: float


ZERO = Components(0.0, 0.0, 0.0, 0.0)


def feature_components(a: ToyFeatures, b: ToyFeatures) -> Components:
    """Each component from its own features only. Colour is the overlap of the whole
    subject's palette histograms: until issue 27 it also compared the outer layer's and the
    core's histograms, which say where the colours are, i.e. the pattern."""
    colour = float(np.minimum(a.colours, b.colours).sum())
    pattern = pattern_similarity(a.pattern, b.pattern)
    shape = shape_similarity(a.shape, b.shape)
    overall = WEIGHTS["colour"] * colour + WEIGHTS["pattern"] * pattern + WEIGHTS["shape"] * shape
    return Components(colour, pattern, shape, overall)


def mean_components(parts: Sequence[Components]) -> Components:
    """Component-wise mean (``ZERO`` for none)."""
    if not parts:
        return ZERO
    return Components(*(float(np.mean(v)) for v in zip(*(astuple(p) for p in parts), strict=True)))


class ToyIdentity:
    """Identity similarity for the toy world (the evaluation's identity-metric protocol).

    An evaluation scores many renders against the same few references, so the references'
    features are kept, keyed by their pixels.
    """

    name = "toy-identity"
    _CACHE = 256  # reference images kept

    def __init__(self) -> None:
        self._features: dict[bytes, ToyFeatures | None] = {}

    def _reference(self, image: Image.Image) -> ToyFeatures | None:
        rgb = image.convert("RGB")
        key = hashlib.blake2b(rgb.tobytes(), digest_size=16).digest() + repr(rgb.size).encode()
        if key not in self._features:
            if len(self._features) >= self._CACHE:
                self._features.pop(next(iter(self._features)))
            self._features[key] = identity_features(rgb)
        return self._features[key]

    def components(
        self, image: Image.Image, references: Sequence[Image.Image]
    ) -> Components | None:
        """Mean components of the image's subject against each reference's; None without one
        (no subject in the image, or in none of the references)."""
        found = identity_features(image)
        refs = [f for f in map(self._reference, references) if f is not None]
        if found is None or not refs:
            return None
        return mean_components([feature_components(found, r) for r in refs])

    def similarity(self, image: Image.Image, references: Sequence[Image.Image]) -> float | None:
        """Mean similarity of the image's subject to each reference's; None without one."""
        parts = self.components(image, references)
        return None if parts is None else parts.overall


_SHARED = ToyIdentity()


def identity_components(image: Image.Image, references: Sequence[Image.Image]) -> Components | None:
    """Colour, pattern, shape and overall similarity of the image's subject to the references'
    (mean over the references); None when the image, or every reference, has no subject."""
    return _SHARED.components(image, references)


_TOP, _BOTTOM = 0.3, 0.2  # bands of the frame: sky (and what stands in it), and ground


def _bands(rgb: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Mean background colour of the top and bottom bands, [6]; the subject left out."""
    h = rgb.shape[0]
    means = []
    for rows in (slice(0, max(1, round(h * _TOP))), slice(h - max(1, round(h * _BOTTOM)), h)):
        keep = background[rows]
        pixels = rgb[rows][keep] if keep.any() else rgb[rows].reshape(-1, 3)
        means.append(pixels.mean(0))
    return np.concatenate(means)


@functools.cache
def _place_prototypes() -> np.ndarray:
    """Each place's mean bands over the world's own backgrounds, [P, 6]."""
    rng = np.random.default_rng(0)
    rows = []
    for place in _PLACE_NAMES:
        drawn = [np.asarray(background(place, 64, rng), np.float32) for _ in range(16)]
        rows.append(np.mean([_bands(d, np.ones(d.shape[:2], bool)) for d in drawn], 0))
    return np.array(rows)


def scene_class(image: Image.Image) -> str:
    """The place whose sky and ground colours are nearest to the image's (subject left out).

    Band means rather than pixel votes: they shrug off noise and stray pixels, and keep the
    layout that tells snow (white ground) from a pale city sky over a dark street.
    """
    rgb = _rgb(image)
    bands = _bands(rgb, ~segment(image))
    return _PLACE_NAMES[int(((_place_prototypes() - bands) ** 2).sum(-1).argmin())]


def scene_accuracy(images: Sequence[Image.Image], expected: Sequence[str]) -> float:
    """Fraction of images whose background is classified as the expected place."""
    if len(images) != len(expected) or not images:
        raise ValueError("scene_accuracy needs as many expected places as images (at least one)")
    return float(np.mean([scene_class(i) == e for i, e in zip(images, expected, strict=True)]))
