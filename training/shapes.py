"""The built-in model's world: coloured shapes on a plain background.

One module holds the vocabulary, the palette, the caption grammar, the renderer that makes training images and
the pixel checker that scores generated ones, so that training and evaluation cannot disagree about what a word
means. `shared/specs/builtin-model.md` is the contract this file implements.
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
COLOURS = list(PALETTE)
SHAPES = ["circle", "square", "triangle"]
SIZES = {"small": (0.25, 0.35), "large": (0.50, 0.65)}
POSITION_PHRASES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}
RELATIONS = {"above": "above", "below": "below", "left_of": "to the left of", "right_of": "to the right of"}
HELD_OUT = {("purple", "triangle"), ("orange", "circle"), ("white", "square"), ("yellow", "triangle")}

SPECIAL_TOKENS = ["<pad>", "<unk>", "<bos>", "<eos>"]
FUNCTION_WORDS = ["a", "an", "on", "the", "at", "in", "of", "to", "with", "background", "above", "below",
                  "left", "right", "top", "bottom", "center"]
VOCABULARY = SPECIAL_TOKENS + COLOURS + SHAPES + list(SIZES) + FUNCTION_WORDS
MAX_TOKENS = 20  # the longest caption has 15 words, plus <bos> and <eos>


@dataclasses.dataclass
class Shape:
    colour: str
    kind: str
    size: str | None = None
    position: str | None = None


@dataclasses.dataclass
class Scene:
    """What a caption asks for: one shape, or two shapes in a relation."""

    background: str
    shapes: list[Shape]
    relation: str | None = None  # for two shapes: where the first lies relative to the second


def allowed_pairs(held_out: bool) -> list[tuple[str, str]]:
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    return [p for p in pairs if (p in HELD_OUT) == held_out]


def sample_scene(rng: random.Random, *, held_out: bool = False, two_shapes: bool = False,
                 p_size: float = 0.8, p_position: float = 0.85) -> Scene:
    """A random scene; `held_out` draws the shape from the four pairs that training never sees."""
    pairs = allowed_pairs(held_out)
    if two_shapes:
        first = rng.choice(pairs)
        second = rng.choice([p for p in allowed_pairs(False) if p[0] != first[0]])
        colours_used = {first[0], second[0]}
        background = rng.choice([c for c in COLOURS if c not in colours_used])
        return Scene(background, [Shape(*first), Shape(*second)], rng.choice(list(RELATIONS)))
    colour, kind = rng.choice(pairs)
    background = rng.choice([c for c in COLOURS if c != colour])
    size = rng.choice(list(SIZES)) if rng.random() < p_size else None
    position = rng.choice(list(POSITION_PHRASES)) if rng.random() < p_position else None
    return Scene(background, [Shape(colour, kind, size, position)])


def caption(scene: Scene, rng: random.Random, p_background: float = 1.0, p_relation: float = 1.0) -> str:
    """A caption in one of the spec's word orders; with `p_background` < 1, the background goes unnamed the rest of
    the time ("a red circle"), as users write: the model then chooses it, in a colour other than the shapes'. With
    `p_relation` < 1, two shapes go without their relation the rest of the time ("a red circle and a blue
    square"): the model chooses that too."""
    bg = scene.background
    named = p_background >= 1.0 or rng.random() < p_background
    on_bg = f" on a {bg} background" if named else ""
    if scene.relation is not None:
        a, b = scene.shapes
        link = RELATIONS[scene.relation] if p_relation >= 1.0 or rng.random() < p_relation else "and"
        return f"a {a.colour} {a.kind} {link} a {b.colour} {b.kind}{on_bg}"
    s = scene.shapes[0]
    noun = " ".join(w for w in (s.size, s.colour, s.kind) if w)
    where = f" {POSITION_PHRASES[s.position]}" if s.position else ""
    article = "an" if noun[0] in "aeiou" else "a"
    if not named or rng.random() < 0.75:
        return f"{article} {noun}{where}{on_bg}"
    return f"a {bg} background with {article} {noun}{where}"


def caption_reordered(scene: Scene, rng: random.Random) -> str:
    """A caption of every attribute in a word order that training never writes, as users type them: tag style
    ("blue background, small red circle, left"), the background first or in the middle, two shapes each with its
    own position ("a red circle on the left and a blue square on the right") or after the background ("a white
    background with a red circle above a blue square")."""
    bg = scene.background
    if scene.relation is not None:
        a, b = scene.shapes
        first, second, link = f"{a.colour} {a.kind}", f"{b.colour} {b.kind}", RELATIONS[scene.relation]
        places = {"left_of": ("left", "right"), "right_of": ("right", "left"), "above": ("top", "bottom"),
                  "below": ("bottom", "top")}[scene.relation]
        return rng.choice([
            f"a {bg} background with a {first} {link} a {second}",
            f"on a {bg} background, a {first} {link} a {second}",
            f"a {first} {POSITION_PHRASES[places[0]]} and a {second} {POSITION_PHRASES[places[1]]}, {bg} background",
        ])
    s = scene.shapes[0]
    noun = " ".join(w for w in (s.size, s.colour, s.kind) if w)
    article = "an" if noun[0] in "aeiou" else "a"
    where = POSITION_PHRASES[s.position] if s.position else ""
    return " ".join(rng.choice([
        f"{bg} background, {noun}, {s.position or ''}",
        f"{article} {noun} on a {bg} background {where}",
        f"on a {bg} background {article} {noun} {where}",
    ]).replace(", ,", ",").strip(" ,").split())


def _centre_range(position: str | None, axis: str, half: float, margin: float = 0.0) -> tuple[float, float]:
    """Where a shape's centre may lie along one axis (fractions of the side), with a margin inside the spec's; its
    edge at least `margin` from the picture's."""
    lo, hi = half + margin, 1.0 - half - margin
    low_word, high_word = ("left", "right") if axis == "x" else ("top", "bottom")
    if position == low_word:
        return lo, max(lo, 0.36)
    if position == high_word:
        return min(hi, 0.64), hi
    if position == "center":
        return max(lo, 0.4), min(hi, 0.6)
    return lo, hi


def _shape_mask(kind: str, cx: float, cy: float, side: float, grid: np.ndarray, gy: np.ndarray) -> np.ndarray:
    half = side / 2
    if kind == "circle":
        return (grid - cx) ** 2 + (gy - cy) ** 2 <= half**2
    if kind == "square":
        return (np.abs(grid - cx) <= half) & (np.abs(gy - cy) <= half)
    # an upright isosceles triangle filling its bounding box: apex at the top centre
    top, bottom = cy - half, cy + half
    t = np.clip((gy - top) / side, 0, 1)
    return (gy >= top) & (gy <= bottom) & (np.abs(grid - cx) <= t * half)


def render(scene: Scene, rng: random.Random, resolution: int = 32, supersample: int = 4, across: float = 1.0,
           margin: float = 0.0) -> np.ndarray:
    """Draw a scene as an RGB uint8 array, antialiased by supersampling. Two shapes' centres lie anywhere across
    their relation's axis (left and right of one above the other) where they fit; with `across` < 1, within
    that share of the room, about the middle. One shape's edge keeps `margin` (a share of the side) from the
    picture's: a large shape on the left touches the edge at 0."""
    n = resolution * supersample
    coords = (np.arange(n) + 0.5) / n
    gx, gy = np.meshgrid(coords, coords)
    img = np.empty((n, n, 3), dtype=np.float32)
    img[:] = PALETTE[scene.background]
    if scene.relation is None:
        s = scene.shapes[0]
        lo, hi = SIZES[s.size or rng.choice(list(SIZES))]
        side = rng.uniform(lo, hi)
        cx = rng.uniform(*_centre_range(s.position, "x", side / 2, margin))
        cy = rng.uniform(*_centre_range(s.position, "y", side / 2, margin))
        img[_shape_mask(s.kind, cx, cy, side, gx, gy)] = PALETTE[s.colour]
    else:
        side = rng.uniform(0.25, 0.33)
        half = side / 2
        # first shape on the named side of the second, both inside the image and apart
        along_a, along_b = rng.uniform(half, 0.5 - half - 0.02), rng.uniform(0.5 + half + 0.02, 1 - half)
        room = (0.5 - half) * across
        across_a, across_b = rng.uniform(0.5 - room, 0.5 + room), rng.uniform(0.5 - room, 0.5 + room)
        if scene.relation in ("above", "left_of"):
            a_main, b_main = along_a, along_b
        else:
            a_main, b_main = along_b, along_a
        vertical = scene.relation in ("above", "below")
        centres = [(across_a, a_main), (across_b, b_main)] if vertical else [(a_main, across_a), (b_main, across_b)]
        for shape, (cx, cy) in zip(scene.shapes, centres):
            img[_shape_mask(shape.kind, cx, cy, side, gx, gy)] = PALETTE[shape.colour]
    img = img.reshape(resolution, supersample, resolution, supersample, 3).mean(axis=(1, 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# --- the pixel checker -------------------------------------------------------------------------------------------

_PALETTE_ARRAY = np.array([PALETTE[c] for c in COLOURS], dtype=np.float32)


def nearest_colour(pixels: np.ndarray) -> np.ndarray:
    d = ((pixels[..., None, :].astype(np.float32) - _PALETTE_ARRAY) ** 2).sum(-1)
    return d.argmin(-1)


@dataclasses.dataclass
class Reading:
    """What the checker sees in one image."""

    background: str
    colours: list[str]  # the shapes' colours, largest first
    centres: list[tuple[float, float]]  # bounding-box centres as fractions of the side
    kinds: list[str]

    @property
    def visible(self) -> bool:
        """A shape shows, in a colour other than the background's."""
        return bool(self.colours) and self.colours[0] != self.background


def _kind_from_fill(box: np.ndarray) -> str:
    """The shape kind from how the shape fills its bounding box: a triangle (apex up) fills its top half far
    less than its bottom half; a square fills the box's corners, which a circle leaves empty."""
    h, w = box.shape
    half = max(1, h // 2)  # a box one pixel high: its one row is both halves
    top, bottom = box[:half].mean(), box[h - half:].mean()
    if top < 0.7 * bottom:
        return "triangle"
    ch, cw = max(1, h // 4), max(1, w // 4)
    corners = np.mean([box[:ch, :cw].mean(), box[:ch, -cw:].mean(), box[-ch:, :cw].mean(), box[-ch:, -cw:].mean()])
    return "square" if corners >= 0.7 else "circle"


def read_image(img: np.ndarray, max_shapes: int = 1) -> Reading:
    """Read background colour, shape colours, positions and kinds off an RGB uint8 image."""
    labels = nearest_colour(img)
    h, w = labels.shape
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    background = int(np.bincount(border, minlength=len(COLOURS)).argmax())
    # a pixel belongs to a shape when it is clearly away from the background colour (edges blend)
    dist = np.sqrt(((img.astype(np.float32) - _PALETTE_ARRAY[background]) ** 2).sum(-1))
    foreground = dist > 60
    counts = np.bincount(labels[foreground], minlength=len(COLOURS))
    counts[background] = 0
    order = [int(i) for i in np.argsort(-counts) if counts[i] >= 3][:max_shapes]
    colours, centres, kinds = [], [], []
    for idx in order:
        mask = foreground & (labels == idx)
        ys, xs = np.nonzero(mask)
        x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        colours.append(COLOURS[idx])
        centres.append(((x0 + x1) / 2 / w, (y0 + y1) / 2 / h))
        kinds.append(_kind_from_fill(foreground[y0:y1, x0:x1].astype(np.float32)))
    return Reading(COLOURS[background], colours, centres, kinds)


def position_holds(position: str, centre: tuple[float, float]) -> bool:
    x, y = centre
    return {
        "left": x < 0.4,
        "right": x > 0.6,
        "top": y < 0.4,
        "bottom": y > 0.6,
        "center": 0.35 <= x <= 0.65 and 0.35 <= y <= 0.65,
    }[position]


def relation_holds(relation: str, a: tuple[float, float], b: tuple[float, float]) -> bool:
    return {
        "above": a[1] < b[1],
        "below": a[1] > b[1],
        "left_of": a[0] < b[0],
        "right_of": a[0] > b[0],
    }[relation]


def score(scene: Scene, img: np.ndarray) -> dict[str, bool]:
    """Which of the scene's attributes the image gets right."""
    if scene.relation is None:
        shape = scene.shapes[0]
        r = read_image(img, 1)
        found = bool(r.colours)
        result = {
            "background": r.background == scene.background,
            "shape_colour": found and r.colours[0] == shape.colour,
            "shape_kind": found and r.kinds[0] == shape.kind,
        }
        if shape.position:
            result["position"] = found and position_holds(shape.position, r.centres[0])
        return result
    r = read_image(img, 2)
    wanted = [s.colour for s in scene.shapes]
    found = {c: (centre, kind) for c, centre, kind in zip(r.colours, r.centres, r.kinds)}
    both = all(c in found for c in wanted)
    return {
        "background": r.background == scene.background,
        "shape_colour": both,
        "position": both and relation_holds(scene.relation, found[wanted[0]][0], found[wanted[1]][0]),
        "shape_kind": both and all(found[s.colour][1] == s.kind for s in scene.shapes),
    }


def edge_width(img: np.ndarray, max_shapes: int = 2) -> float | None:
    """The spec's edge width (version 2): the pixels that are within 24 (Euclidean, 0..255) neither of the
    background's palette colour nor of a shape's, divided by the length of the shapes' outlines (their boundary
    pixels); None where no shape is found. Rendered at 256 pixels, hard edges score 0 and edges antialiased by
    2x2 supersampling about 0.6; a 32-pixel rendering resized to 256 (bicubic), as version 1 is, about 7.6."""
    reading = read_image(img, max_shapes)
    if not reading.colours:
        return None
    pixels = img.astype(np.float32)
    colours = [reading.background, *reading.colours]
    near = np.zeros(img.shape[:2], dtype=bool)
    for colour in colours:
        near |= np.sqrt(((pixels - np.array(PALETTE[colour], dtype=np.float32)) ** 2).sum(-1)) <= 24
    labels = nearest_colour(img)
    shape = np.isin(labels, [COLOURS.index(c) for c in reading.colours])
    inner = shape.copy()
    inner[1:] &= shape[:-1]
    inner[:-1] &= shape[1:]
    inner[:, 1:] &= shape[:, :-1]
    inner[:, :-1] &= shape[:, 1:]
    outline = int((shape & ~inner).sum())
    return float((~near).sum()) / max(outline, 1)


# --- geometry: is a shape true to its kind (version 3) -----------------------------------------------------------

SPECK = 30  # pixels: a connected piece of a shape's colour smaller than this is a speck, not a piece


@dataclasses.dataclass
class Geometry:
    """How one shape's colour lies in a picture: its pieces, and the largest piece's form."""

    pieces: int  # connected components of the colour (8-connected), specks aside
    roundness: float  # spread of the outline's distance to the centroid (std / mean): a digital disk ~0.01
    fill: float  # share of its bounding box that the largest piece fills (a square 1.0, a disk 0.785)
    corners: int  # vertices of its outline simplified to within 3% of its perimeter (a triangle 3)


def geometry(img: np.ndarray, colour: str) -> Geometry | None:
    """The geometry of `colour`'s pixels (nearest palette colour) in an RGB uint8 picture; None where it has no
    piece. The outline is the piece's pixels with a 4-neighbour outside it."""
    import cv2

    mask = (nearest_colour(img) == COLOURS.index(colour)).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    if not len(areas) or areas.max() < SPECK:
        return None
    largest = 1 + int(areas.argmax())
    piece = labels == largest
    x, y, w, h = (int(v) for v in stats[largest, :4])
    inner = piece.copy()
    inner[1:] &= piece[:-1]
    inner[:-1] &= piece[1:]
    inner[:, 1:] &= piece[:, :-1]
    inner[:, :-1] &= piece[:, 1:]
    ys, xs = np.nonzero(piece)
    oy, ox = np.nonzero(piece & ~inner)
    distance = np.hypot(ox - xs.mean(), oy - ys.mean())
    contours, _ = cv2.findContours(piece.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour = max(contours, key=cv2.contourArea)
    corners = len(cv2.approxPolyDP(contour, 0.03 * cv2.arcLength(contour, True), True))
    return Geometry(pieces=int((areas >= SPECK).sum()), roundness=float(distance.std() / max(distance.mean(), 1e-6)),
                    fill=float(piece.sum() / (w * h)), corners=corners)


def geometry_summary(found: dict[str, list[Geometry | None]]) -> dict[str, float]:
    """Version 3's four scores over the shapes asked for (`found`: kind -> each asked shape's `geometry`, None where
    its colour is missing): the median circle's outline spread, the median square's fill of its bounding box, the
    share of triangles with three corners and of shapes in one piece (NaN for a kind not asked)."""
    drawn = {kind: [g for g in found.get(kind, []) if g is not None] for kind in SHAPES}
    every = [g for kind in SHAPES for g in found.get(kind, [])]
    triangles = found.get("triangle", [])
    return {
        "circle_spread": round(float(np.median([g.roundness for g in drawn["circle"]] or [np.nan])), 4),
        "square_fill": round(float(np.median([g.fill for g in drawn["square"]] or [np.nan])), 4),
        "triangle_3": round(float(np.mean([g is not None and g.corners == 3 for g in triangles] or [np.nan])), 4),
        "one_piece": round(float(np.mean([g is not None and g.pieces == 1 for g in every] or [np.nan])), 4),
    }
