"""A seeded synthetic world of coloured shapes on textured places, with exact ground truth.

Each scene holds 1-3 copies of one kind of object (shape, colour, size) in distinct cells of a 3x3 grid,
drawn over a background "place" (water, grass, sand, snow, sky) with its own palette and texture. Rendering
is pure numpy + PIL and fully determined by the scene record, so per-object masks are exact: a pixel belongs
to object k iff it was painted by object k.

A spurious-cue variant in the spirit of Waterbirds adds two bird glyphs ("landbird", "waterbird"). In the
training stream each bird sits on a matching place group (land: grass/sand/snow, water: water) with
probability ``SPURIOUS_AGREEMENT``; the evaluation set balances all four (bird, place group) groups.

The training stream builds *hard-negative groups*: a base scene plus variants that differ from it in exactly
one attribute (shape, colour, position, count, size, place), and captions that name that attribute, so a
contrastive model can only tell them apart by that attribute.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "diamond")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 135, 20),
    "yellow": (245, 225, 30),
    "green": (20, 175, 50),
    "blue": (30, 60, 225),
    "purple": (140, 40, 190),
    "pink": (250, 120, 190),
}
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)
PLACES: tuple[str, ...] = ("water", "grass", "sand", "snow", "sky")
COUNTS: tuple[str, ...] = ("one", "two", "three")
BIRDS: tuple[str, ...] = ("landbird", "waterbird")
LAND_PLACES: tuple[str, ...] = ("grass", "sand", "snow")
WATER_PLACES: tuple[str, ...] = ("water",)
PLACE_GROUPS: tuple[str, ...] = ("land", "water")
SPURIOUS_AGREEMENT = 0.95
SWEEP_WEIGHTS: dict[str, float] = {"position": 0.6, "shape": 0.3, "count": 0.1}  # the training sweep mix
TRAIN_BIRD_SIZE = "small"  # birds in the training stream: small glyphs, so the place is the easier cue
ATTRIBUTES: tuple[str, ...] = ("colour", "shape", "position", "place", "count", "size")

_RADIUS = {"small": 5, "large": 9}
_BIRD_RADIUS = {"small": 6, "large": 10}
_OUTLINE = np.array([20, 20, 20], dtype=np.uint8)

_POSITION_PHRASE = {
    "top left": "in the top left", "top": "at the top", "top right": "in the top right",
    "left": "on the left", "center": "in the center", "right": "on the right",
    "bottom left": "in the bottom left", "bottom": "at the bottom", "bottom right": "in the bottom right",
}
_PLACE_PHRASES = {
    "water": ("on water", "on the water", "on a lake"),
    "grass": ("on grass", "on the grass", "on a lawn"),
    "sand": ("on sand", "on the sand", "on a beach"),
    "snow": ("on snow", "in the snow", "on a snowfield"),
    "sky": ("in the sky", "against the sky", "in a clear sky"),
}
_COUNT_WORD = {1: "one", 2: "two", 3: "three"}
_PLURAL = {"cross": "crosses"}


def plural(noun: str) -> str:
    """English plural of a shape noun."""
    return _PLURAL.get(noun, noun + "s")


def position_phrase(position: str) -> str:
    """Phrase used in captions for a grid cell, e.g. 'top left' -> 'in the top left'."""
    if position not in _POSITION_PHRASE:
        raise ValueError(f"unknown position {position!r}; expected one of {POSITIONS}")
    return _POSITION_PHRASE[position]


def place_phrase(place: str, variant: int = 0) -> str:
    """Phrase used in captions for a place, e.g. 'snow' -> 'in the snow'."""
    if place not in _PLACE_PHRASES:
        raise ValueError(f"unknown place {place!r}; expected one of {PLACES}")
    phrases = _PLACE_PHRASES[place]
    return phrases[variant % len(phrases)]


def place_group(place: str) -> str:
    """'water' for water places, 'land' for land places (sky belongs to neither group)."""
    if place in WATER_PLACES:
        return "water"
    if place in LAND_PLACES:
        return "land"
    raise ValueError(f"place {place!r} belongs to no place group")


@dataclass(frozen=True)
class SceneSpec:
    """Everything that determines a rendered scene.

    ``kind`` is a shape from SHAPES or a bird from BIRDS. ``cells`` are grid indices 0..8 (row-major),
    ``offsets`` the per-object pixel jitter, ``texture_seed`` seeds the background texture.
    """

    kind: str
    colour: str
    size: str
    cells: tuple[int, ...]
    offsets: tuple[tuple[int, int], ...]
    place: str
    texture_seed: int
    colour_jitter: tuple[int, int, int] = (0, 0, 0)

    @property
    def count(self) -> int:
        return len(self.cells)

    @property
    def is_bird(self) -> bool:
        return self.kind in BIRDS


@dataclass
class SceneAttributes:
    """Ground-truth attributes of a scene; ``position`` is None when there is more than one object."""

    shape: str | None
    colour: str
    size: str
    count: int
    position: str | None
    positions: tuple[str, ...]
    place: str
    bird: str | None = None
    place_group: str | None = None
    group: int | None = None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Scene:
    """A rendered scene: RGB image [H, W, 3] uint8, object masks [n_obj, H, W] bool, union mask, caption."""

    image: np.ndarray
    masks: np.ndarray
    foreground: np.ndarray
    attributes: SceneAttributes
    caption: str
    spec: SceneSpec = field(repr=False)

    def pil(self) -> Image.Image:
        return Image.fromarray(self.image)


def attributes_of(spec: SceneSpec) -> SceneAttributes:
    """Ground-truth attribute record of a scene spec."""
    positions = tuple(POSITIONS[c] for c in spec.cells)
    bird = spec.kind if spec.is_bird else None
    group_name = None
    group = None
    if bird is not None and spec.place in LAND_PLACES + WATER_PLACES:
        group_name = place_group(spec.place)
        group = 2 * BIRDS.index(bird) + PLACE_GROUPS.index(group_name)
    return SceneAttributes(
        shape=None if spec.is_bird else spec.kind,
        colour=spec.colour,
        size=spec.size,
        count=spec.count,
        position=positions[0] if spec.count == 1 else None,
        positions=positions,
        place=spec.place,
        bird=bird,
        place_group=group_name,
        group=group,
    )


# --------------------------------------------------------------------------------------------- textures


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Value noise in [0, 1]: a cells x cells random grid bilinearly upsampled to size x size."""
    grid = rng.random((cells + 1, cells + 1))
    coords = np.linspace(0, cells, size, endpoint=False)
    i0 = coords.astype(int)
    t = coords - i0
    t = t * t * (3 - 2 * t)
    rows = grid[i0] * (1 - t)[:, None] + grid[i0 + 1] * t[:, None]
    return rows[:, i0] * (1 - t)[None, :] + rows[:, i0 + 1] * t[None, :]


def render_background(place: str, size: int, texture_seed: int) -> np.ndarray:
    """Procedural texture of a place as float RGB [size, size, 3] in 0..255.

    water: blue with bright sinuous wave lines; grass: green with vertical blades; sand: tan with dark and
    light speckles; snow: white-grey with soft shading and flakes; sky: light blue with white clouds.
    """
    rng = np.random.default_rng(texture_seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) / size
    tint = rng.normal(0.0, 6.0, size=3)
    if place == "water":
        base = np.array([35.0, 85.0, 150.0])
        phase = rng.uniform(0, 2 * np.pi)
        waves = np.sin(2 * np.pi * (7 * y + 0.35 * np.sin(2 * np.pi * (2 * x + phase))) + phase)
        crest = np.clip(waves - 0.55, 0, None) / 0.45
        img = base + crest[..., None] * np.array([110.0, 120.0, 90.0]) - 15 * (waves < -0.6)[..., None]
    elif place == "grass":
        base = np.array([75.0, 135.0, 45.0])
        blades = rng.random((-(-size // 6), size))
        blades = np.repeat(blades, 6, axis=0)[:size]
        shift = rng.integers(0, 6, size=size)
        rows = (np.arange(size)[:, None] - shift[None, :]) % size  # column j rolled down by shift[j]
        blades = blades[rows, np.arange(size)[None, :]]
        light = (blades - 0.5) * 70
        img = base + light[..., None] * np.array([0.6, 1.0, 0.4])
    elif place == "sand":
        base = np.array([205.0, 180.0, 125.0])
        speck = rng.random((size, size))
        img = base + 25 * (_smooth_noise(rng, size, 4) - 0.5)[..., None]
        img = img - 70 * (speck < 0.08)[..., None] + 35 * (speck > 0.95)[..., None]
    elif place == "snow":
        base = np.array([228.0, 234.0, 242.0])
        shade = _smooth_noise(rng, size, 3) - 0.5
        img = base + 30 * shade[..., None] * np.array([1.0, 1.0, 0.6])
        flakes = rng.random((size, size)) < 0.05
        img = img - 55 * flakes[..., None] * np.array([1.0, 0.9, 0.6])
    elif place == "sky":
        base = np.array([125.0, 185.0, 240.0])
        cloud = _smooth_noise(rng, size, 4) * 0.7 + _smooth_noise(rng, size, 8) * 0.3
        cover = np.clip((cloud - 0.55) / 0.2, 0, 1)
        img = base * (1 - cover[..., None]) + np.array([250.0, 250.0, 252.0]) * cover[..., None]
        img = img + 12 * (y[..., None] - 0.5) * np.array([-1.0, -1.0, 0.0])
    else:
        raise ValueError(f"unknown place {place!r}; expected one of {PLACES}")
    return img + tint


# --------------------------------------------------------------------------------------------- glyphs


def _star(cx: float | int, cy: float | int, r: float | int) -> list[tuple[float, float]]:
    pts = []
    for k in range(10):
        rad = r if k % 2 == 0 else r * 0.45
        a = -np.pi / 2 + k * np.pi / 5
        pts.append((cx + rad * np.cos(a), cy + rad * np.sin(a)))
    return pts


def _cross(cx: float | int, cy: float | int, r: float | int) -> list[tuple[float | int, float | int]]:
    w = r * 0.38
    return [
        (cx - w, cy - r), (cx + w, cy - r), (cx + w, cy - w), (cx + r, cy - w), (cx + r, cy + w),
        (cx + w, cy + w), (cx + w, cy + r), (cx - w, cy + r), (cx - w, cy + w), (cx - r, cy + w),
        (cx - r, cy - w), (cx - w, cy - w),
    ]


def _draw_glyph(draw: ImageDraw.ImageDraw, kind: str, cx: float | int, cy: float | int, r: float | int) -> None:
    """Draw a filled glyph with value 255 on an 'L' canvas (no antialiasing, so the mask is exact)."""
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif kind == "square":
        s = r * 0.85
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=255)
    elif kind == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=255)
    elif kind == "star":
        draw.polygon(_star(cx, cy, r * 1.1), fill=255)
    elif kind == "cross":
        draw.polygon(_cross(cx, cy, r), fill=255)
    elif kind == "diamond":
        draw.polygon([(cx, cy - r), (cx + r * 0.75, cy), (cx, cy + r), (cx - r * 0.75, cy)], fill=255)
    elif kind == "landbird":
        # perched songbird facing right: round body, head, short pointed beak, raised tail, two legs
        draw.ellipse([cx - r * 0.6, cy - r * 0.35, cx + r * 0.45, cy + r * 0.45], fill=255)
        draw.ellipse([cx + r * 0.15, cy - r * 0.8, cx + r * 0.7, cy - r * 0.25], fill=255)
        draw.polygon([(cx + r * 0.65, cy - r * 0.6), (cx + r, cy - r * 0.5), (cx + r * 0.65, cy - r * 0.4)],
                     fill=255)
        draw.polygon([(cx - r * 0.45, cy), (cx - r, cy - r * 0.7), (cx - r * 0.75, cy - r * 0.75)], fill=255)
        draw.line([(cx - r * 0.15, cy + r * 0.4), (cx - r * 0.25, cy + r)], fill=255, width=1)
        draw.line([(cx + r * 0.15, cy + r * 0.4), (cx + r * 0.25, cy + r)], fill=255, width=1)
    elif kind == "waterbird":
        # floating duck/swan facing right: long flat hull, long upright neck, flat wide bill
        draw.chord([cx - r, cy - r * 0.1, cx + r * 0.6, cy + r * 0.75], 0, 180, fill=255)
        draw.polygon([(cx - r, cy + r * 0.3), (cx - r * 0.9, cy - r * 0.05), (cx - r * 0.6, cy + r * 0.3)],
                     fill=255)
        draw.rectangle([cx + r * 0.25, cy - r * 0.75, cx + r * 0.5, cy + r * 0.35], fill=255)
        draw.ellipse([cx + r * 0.15, cy - r, cx + r * 0.65, cy - r * 0.55], fill=255)
        draw.rectangle([cx + r * 0.6, cy - r * 0.82, cx + r, cy - r * 0.68], fill=255)
    else:
        raise ValueError(f"unknown object kind {kind!r}")


def _glyph_radius(spec: SceneSpec) -> int:
    return _BIRD_RADIUS[spec.size] if spec.is_bird else _RADIUS[spec.size]


def cell_centre(cell: int, image_size: int) -> tuple[float, float]:
    """Pixel centre (x, y) of grid cell 0..8 (row-major)."""
    row, col = divmod(cell, 3)
    step = image_size / 3
    return (col + 0.5) * step - 0.5, (row + 0.5) * step - 0.5


def render(spec: SceneSpec, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Render a scene spec. Returns (image [H, W, 3] uint8, masks [n_obj, H, W] bool).

    A mask pixel is exactly a pixel painted by that object (fill + dark outline); all other pixels are the
    background texture of ``render_background`` (clipped to uint8).
    """
    background = render_background(spec.place, image_size, spec.texture_seed)
    image = np.clip(background, 0, 255)
    colour = np.clip(np.array(COLOURS[spec.colour], dtype=np.float64) + np.array(spec.colour_jitter), 0, 255)
    r = _glyph_radius(spec)
    masks = np.zeros((spec.count, image_size, image_size), dtype=bool)
    for k, (cell, (dx, dy)) in enumerate(zip(spec.cells, spec.offsets)):
        canvas = Image.new("L", (image_size, image_size), 0)
        cx, cy = cell_centre(cell, image_size)
        _draw_glyph(ImageDraw.Draw(canvas), spec.kind, cx + dx, cy + dy, r)
        mask = np.asarray(canvas) > 0
        interior = mask.copy()
        interior[1:, :] &= mask[:-1, :]
        interior[:-1, :] &= mask[1:, :]
        interior[:, 1:] &= mask[:, :-1]
        interior[:, :-1] &= mask[:, 1:]
        outline = mask & ~interior
        image[interior] = colour
        image[outline] = _OUTLINE
        masks[k] = mask
    return image.round().astype(np.uint8), masks


# --------------------------------------------------------------------------------------------- captions


def counted_noun_phrase(count: int, modifiers: Sequence[str], noun: str, say_one: bool = False) -> str:
    """The captions' noun phrase: 'a red circle', 'an orange star', 'one circle', 'two small red crosses'."""
    if count not in _COUNT_WORD:
        raise ValueError(f"count must be one of {sorted(_COUNT_WORD)}, got {count}")
    body = " ".join([*modifiers, noun if count == 1 else plural(noun)])
    if count > 1 or say_one:
        return f"{_COUNT_WORD[count]} {body}"
    return ("an " if body[0] in "aeiou" else "a ") + body


def _noun_phrase(attrs: SceneAttributes, rng: np.random.Generator, mention: dict[str, bool]) -> str:
    noun = attrs.bird if attrs.bird is not None else attrs.shape
    assert noun is not None
    modifiers = [attrs.size] * mention["size"] + [attrs.colour] * mention["colour"]
    say_one = attrs.count == 1 and mention["count"] and bool(rng.random() < 0.5)
    return counted_noun_phrase(attrs.count, modifiers, noun, say_one)


def make_caption(
    attrs: SceneAttributes,
    rng: np.random.Generator,
    must_mention: Sequence[str] = (),
    short_prob: float = 0.06,
) -> str:
    """A varied caption of a scene.

    Shape scenes: colour and shape are named in ~95% of captions, position (single objects) in ~85%, count
    whenever there is more than one object (plus "one" sometimes), size ~55%, place ~55%. Bird scenes name
    the bird always, colour ~50%, position ~50% and the place only ~30%. ``must_mention`` forces attributes.
    """
    forced = set(must_mention)
    unknown = forced - set(ATTRIBUTES)
    if unknown:
        raise ValueError(f"unknown attributes {sorted(unknown)}; expected a subset of {ATTRIBUTES}")
    is_bird = attrs.bird is not None
    short = not forced and rng.random() < short_prob
    if is_bird:
        probs = {"colour": 0.5, "size": 0.0, "position": 0.5, "place": 0.3, "count": 0.0}
    elif short:
        probs = {"colour": 1.0, "size": 0.0, "position": 0.0, "place": 0.0, "count": 0.0}
    else:
        probs = {"colour": 0.95, "size": 0.55, "position": 0.85, "place": 0.55, "count": 0.15}
    mention = {k: (k in forced) or bool(rng.random() < p) for k, p in probs.items()}
    if attrs.count > 1:
        mention["position"] = False
    noun_phrase = _noun_phrase(attrs, rng, mention)
    if short:
        return noun_phrase.split(" ", 1)[1] if noun_phrase.startswith(("a ", "an ")) else noun_phrase
    parts = [noun_phrase]
    if mention["position"] and attrs.position is not None:
        parts.append(position_phrase(attrs.position))
    if mention["place"]:
        parts.append(place_phrase(attrs.place, int(rng.integers(0, 3))))
    body = " ".join(parts)
    template = int(rng.integers(0, 5))
    if template == 0:
        return body
    if template == 1:
        return f"a photo of {body}."
    if template == 2:
        verb = "is" if attrs.count == 1 else "are"
        return f"there {verb} {body}"
    if template == 3:
        return f"an image showing {body}."
    return f"a picture of {body}"


# --------------------------------------------------------------------------------------------- the world


class ShapesWorld:
    """Seeded generator of scenes.

    ``sample(rng)`` draws one scene; ``sample_group(rng, n)`` draws a base scene plus ``n - 1`` variants that
    each differ from it in exactly one attribute; ``sample_bird(rng, split)`` draws a spurious-cue scene.
    """

    def __init__(self, image_size: int = 64, seed: int = 0, count_probs: Sequence[float] = (0.5, 0.25, 0.25),
                 bird_size: str = TRAIN_BIRD_SIZE):
        if bird_size not in SIZES:
            raise ValueError(f"unknown bird size {bird_size!r}; expected one of {SIZES}")
        if image_size < 48:
            raise ValueError(f"image_size must be >= 48 to draw the glyphs, got {image_size}")
        if len(count_probs) != 3 or abs(sum(count_probs) - 1) > 1e-6:
            raise ValueError("count_probs must be three probabilities for 1, 2, 3 objects summing to 1")
        self.image_size = image_size
        self.seed = seed
        self.bird_size = bird_size
        self.count_probs = np.asarray(count_probs, dtype=np.float64)
        self._rng = np.random.default_rng(seed)

    # ---- specs
    def _offsets(self, rng: np.random.Generator, n: int, radius: int) -> tuple[tuple[int, int], ...]:
        slack = max(int(self.image_size / 6 - radius - 1.5), 0)
        return tuple((int(rng.integers(-slack, slack + 1)), int(rng.integers(-slack, slack + 1))) for _ in range(n))

    def _colour_jitter(self, rng: np.random.Generator) -> tuple[int, int, int]:
        return tuple(int(v) for v in rng.integers(-12, 13, size=3))  # type: ignore[return-value]

    def sample_spec(self, rng: np.random.Generator) -> SceneSpec:
        """A random shape scene spec."""
        count = int(rng.choice(3, p=self.count_probs)) + 1
        size = SIZES[int(rng.integers(0, 2))]
        cells = tuple(int(c) for c in rng.choice(9, size=count, replace=False))
        return SceneSpec(
            kind=SHAPES[int(rng.integers(0, len(SHAPES)))],
            colour=list(COLOURS)[int(rng.integers(0, len(COLOURS)))],
            size=size,
            cells=cells,
            offsets=self._offsets(rng, count, _RADIUS[size]),
            place=PLACES[int(rng.integers(0, len(PLACES)))],
            texture_seed=int(rng.integers(0, 2**31)),
            colour_jitter=self._colour_jitter(rng),
        )

    def bird_spec(self, rng: np.random.Generator, bird: str, place: str, size: str | None = None) -> SceneSpec:
        """A single-bird scene spec with the given bird and place (``size`` defaults to the world's bird size)."""
        size = self.bird_size if size is None else size
        if bird not in BIRDS:
            raise ValueError(f"unknown bird {bird!r}; expected one of {BIRDS}")
        if size not in SIZES:
            raise ValueError(f"unknown size {size!r}; expected one of {SIZES}")
        cell = int(rng.integers(0, 9))
        return SceneSpec(
            kind=bird,
            colour=list(COLOURS)[int(rng.integers(0, len(COLOURS)))],
            size=size,
            cells=(cell,),
            offsets=self._offsets(rng, 1, _BIRD_RADIUS[size]),
            place=place,
            texture_seed=int(rng.integers(0, 2**31)),
            colour_jitter=self._colour_jitter(rng),
        )

    def vary(self, spec: SceneSpec, attribute: str, rng: np.random.Generator) -> SceneSpec:
        """A copy of a shape spec that differs in exactly ``attribute`` (same texture, jitter and colour tint)."""
        if attribute == "shape":
            return dataclasses.replace(spec, kind=_other(rng, SHAPES, spec.kind))
        if attribute == "colour":
            return dataclasses.replace(spec, colour=_other(rng, tuple(COLOURS), spec.colour))
        if attribute == "place":
            return dataclasses.replace(spec, place=_other(rng, PLACES, spec.place))
        if attribute == "size":
            size = _other(rng, SIZES, spec.size)
            return dataclasses.replace(spec, size=size, offsets=self._offsets(rng, spec.count, _RADIUS[size]))
        if attribute == "position":
            if spec.count != 1:
                raise ValueError("position is only defined for single-object scenes")
            return dataclasses.replace(spec, cells=(int(_other(rng, tuple(range(9)), spec.cells[0])),))
        if attribute == "count":
            count = int(_other(rng, (1, 2, 3), spec.count))
            free = [c for c in range(9) if c not in spec.cells]
            if count < spec.count:
                cells = spec.cells[:count]
                offsets = spec.offsets[:count]
            else:
                extra = tuple(int(c) for c in rng.choice(free, size=count - spec.count, replace=False))
                cells = spec.cells + extra
                offsets = spec.offsets + self._offsets(rng, count - spec.count, _RADIUS[spec.size])
            return dataclasses.replace(spec, cells=cells, offsets=offsets)
        raise ValueError(f"unknown attribute {attribute!r}; expected one of {ATTRIBUTES}")

    # ---- scenes
    def render_spec(self, spec: SceneSpec, rng: np.random.Generator, must_mention: Sequence[str] = ()) -> Scene:
        """Render a spec and caption it."""
        image, masks = render(spec, self.image_size)
        attrs = attributes_of(spec)
        caption = make_caption(attrs, rng, must_mention)
        return Scene(image=image, masks=masks, foreground=masks.any(axis=0), attributes=attrs,
                     caption=caption, spec=spec)

    def sample(self, rng: np.random.Generator | None = None) -> Scene:
        """One random shape scene (uses the world's own seeded stream when ``rng`` is None)."""
        rng = self._rng if rng is None else rng
        return self.render_spec(self.sample_spec(rng), rng)

    def sample_group(self, rng: np.random.Generator, n: int = 4) -> list[Scene]:
        """A base scene and ``n - 1`` hard negatives, each differing from it in one attribute.

        Every caption in the group names every varied attribute, so the captions can only be matched to
        the images through those attributes.
        """
        if n < 1:
            raise ValueError("group size must be >= 1")
        base = self.sample_spec(rng)
        choices = [a for a in ATTRIBUTES if not (a == "position" and base.count != 1)]
        # shape, position and count are the hard ones; weight them up
        weights = np.array([{"shape": 3.0, "position": 3.0, "count": 2.0}.get(a, 1.0) for a in choices])
        k = min(n - 1, len(choices))
        varied = [choices[i] for i in rng.choice(len(choices), size=k, replace=False, p=weights / weights.sum())]
        specs = [base] + [self.vary(base, a, rng) for a in varied]
        scenes = []
        for spec in specs:
            must = list(varied)
            if spec.count != 1 and "position" in must:
                must.remove("position")
            scenes.append(self.render_spec(spec, rng, must))
        return scenes

    def sample_sweep(self, rng: np.random.Generator, n: int = 4, attribute: str | None = None,
                     weights: dict[str, float] | None = None) -> list[Scene]:
        """``n`` scenes identical except for one attribute, all captions naming it: inside such a sweep that
        attribute is the only way to match captions to images. When ``attribute`` is None it is drawn from
        ``weights`` (attribute -> probability, default ``SWEEP_WEIGHTS``)."""
        if attribute is None:
            names, probs = sweep_distribution(SWEEP_WEIGHTS if weights is None else weights)
            attribute = names[int(rng.choice(len(names), p=probs))]
        base = self.sample_spec(rng)
        if attribute == "position" and base.count != 1:
            base = dataclasses.replace(base, cells=base.cells[:1], offsets=base.offsets[:1])
        specs = [base]
        for _ in range(n - 1):
            seen = {(s.kind, s.colour, s.size, s.cells, s.place) for s in specs}
            for _attempt in range(20):
                cand = self.vary(base, attribute, rng)
                if (cand.kind, cand.colour, cand.size, cand.cells, cand.place) not in seen:
                    break
            specs.append(cand)
        return [self.render_spec(spec, rng, [attribute] if spec.count == 1 or attribute != "position" else [])
                for spec in specs]

    def sample_bird(self, rng: np.random.Generator, split: str = "train", group: int | None = None,
                    size: str | None = None) -> Scene:
        """A spurious-cue bird scene.

        split='train': the bird sits on its matching place group with probability SPURIOUS_AGREEMENT.
        split='eval': the (bird, place group) pair is given by ``group`` = 2 * bird_index + place_group_index
        (random when None), so the four groups can be balanced. ``size`` defaults to the world's bird size (the
        training distribution); the other size gives a shifted evaluation.
        """
        if split == "train":
            bird = BIRDS[int(rng.integers(0, 2))]
            matching = (rng.random() < SPURIOUS_AGREEMENT)
            water = (bird == "waterbird") == matching
        elif split == "eval":
            g = int(rng.integers(0, 4)) if group is None else group
            if not 0 <= g < 4:
                raise ValueError(f"group must be in 0..3, got {g}")
            bird = BIRDS[g // 2]
            water = PLACE_GROUPS[g % 2] == "water"
        else:
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        places = WATER_PLACES if water else LAND_PLACES
        place = places[int(rng.integers(0, len(places)))]
        return self.render_spec(self.bird_spec(rng, bird, place, size), rng)

    def training_batch(self, rng: np.random.Generator, batch_size: int, group_size: int = 4,
                       bird_fraction: float = 0.2, sweep_fraction: float = 0.0,
                       sweep_weights: dict[str, float] | None = None) -> list[Scene]:
        """A training batch: ~bird_fraction spurious bird scenes, then hard-negative groups of shape scenes;
        a ``sweep_fraction`` of the groups are single-attribute sweeps (``sample_sweep`` with ``sweep_weights``)."""
        n_birds = int(rng.binomial(batch_size, bird_fraction))
        scenes = [self.sample_bird(rng, "train") for _ in range(n_birds)]
        while len(scenes) < batch_size:
            n = min(group_size, batch_size - len(scenes))
            sweep = sweep_fraction > 0 and rng.random() < sweep_fraction
            scenes.extend(self.sample_sweep(rng, n, weights=sweep_weights) if sweep else self.sample_group(rng, n))
        return scenes


def sweep_distribution(weights: dict[str, float]) -> tuple[list[str], np.ndarray]:
    """Validated (attribute names, probabilities) for sweep sampling; the weights are normalised."""
    unknown = set(weights) - set(ATTRIBUTES)
    if unknown:
        raise ValueError(f"unknown sweep attribute(s) {sorted(unknown)}; expected some of {ATTRIBUTES}")
    names = [a for a in weights if weights[a] > 0]
    if any(w < 0 for w in weights.values()) or not names:
        raise ValueError(f"sweep weights must be >= 0 with at least one positive, got {weights}")
    probs = np.array([weights[a] for a in names], dtype=np.float64)
    return names, probs / probs.sum()


def _other(rng: np.random.Generator, options: Sequence, current):
    rest = [o for o in options if o != current]
    return rest[int(rng.integers(0, len(rest)))]


# --------------------------------------------------------------------------------------------- zero-shot label sets


def zero_shot_labels(attribute: str) -> tuple[list[str], list[Callable[[str], str]]]:
    """(class_names, templates) for zero-shot classification of an attribute.

    Templates are callables (class name -> prompt) ensembled over the nuisance attributes, ready for
    open_clip's ``build_zero_shot_classifier``. Attributes: colour, shape, position, place, count, size,
    and 'bird' for the spurious-cue task.
    """
    colours = list(COLOURS)
    if attribute == "colour":
        return colours, [lambda c, s=s: f"a {c} {s}" for s in SHAPES] + [lambda c: f"a photo of a {c} shape."]
    if attribute == "shape":
        return list(SHAPES), [lambda s, c=c: f"a {c} {s}" for c in colours] + [lambda s: f"a photo of a {s}."]
    if attribute == "position":
        return list(POSITIONS), [lambda p, s=s: f"a {s} {position_phrase(p)}" for s in SHAPES]
    if attribute == "place":
        return list(PLACES), [lambda p, s=s: f"a {s} {place_phrase(p)}" for s in SHAPES] + [
            lambda p: f"a photo of a shape {place_phrase(p, 1)}."]
    if attribute == "count":
        def count_template(shape: str) -> Callable[[str], str]:
            return lambda n: f"one {shape}" if n == "one" else f"{n} {plural(shape)}"
        return list(COUNTS), [count_template(s) for s in SHAPES]
    if attribute == "size":
        return list(SIZES), [lambda z, s=s: f"a {z} {s}" for s in SHAPES]
    if attribute == "bird":
        return list(BIRDS), [lambda b: f"a photo of a {b}.", lambda b: f"a {b}", lambda b: f"a picture of a {b}"]
    raise ValueError(f"unknown attribute {attribute!r}; expected one of {ATTRIBUTES + ('bird',)}")


COUNT_AWARE_ATTRIBUTES: tuple[str, ...] = ("colour", "shape", "place", "size")


def count_aware_labels(attribute: str) -> tuple[list[tuple[str, int]], list[Callable[[tuple[str, int]], str]]]:
    """(joint classes, templates) for count-aware zero-shot classification of ``attribute``.

    Captions of 2-3 objects use the plural ('two red circles'), and 'circle' and 'circles' are different
    tokens, so a singular prompt mismatches multi-object scenes. Here each class is a pair (value, count),
    worded in the captions' grammar and ensembled over the same nuisance attributes as ``zero_shot_labels``;
    the predicted value is that of the best pair: argmax_v max_n <f_img, w_(v,n)>.
    """
    if attribute not in COUNT_AWARE_ATTRIBUTES:
        raise ValueError(f"count-aware labels exist for {COUNT_AWARE_ATTRIBUTES}, not {attribute!r} "
                         "(position is defined for single objects only; count is the count)")
    values = zero_shot_labels(attribute)[0]
    pairs = [(value, count) for value in values for count in sorted(_COUNT_WORD)]
    Template = Callable[[tuple[str, int]], str]
    if attribute == "shape":
        templates: list[Template] = [lambda vn, c=c: counted_noun_phrase(vn[1], [c], vn[0]) for c in COLOURS]
        templates.append(lambda vn: f"a photo of {counted_noun_phrase(vn[1], [], vn[0])}.")
    elif attribute == "colour":
        templates = [lambda vn, s=s: counted_noun_phrase(vn[1], [vn[0]], s) for s in SHAPES]
        templates.append(lambda vn: f"a photo of {counted_noun_phrase(vn[1], [vn[0]], 'shape')}.")
    elif attribute == "size":
        templates = [lambda vn, s=s: counted_noun_phrase(vn[1], [vn[0]], s) for s in SHAPES]
    else:
        templates = [lambda vn, s=s: f"{counted_noun_phrase(vn[1], [], s)} {place_phrase(vn[0])}" for s in SHAPES]
        templates.append(lambda vn: f"a photo of {counted_noun_phrase(vn[1], [], 'shape')} {place_phrase(vn[0], 1)}.")
    return pairs, templates


def label_of(attrs: SceneAttributes, attribute: str) -> int | None:
    """Index of a scene's true class for ``attribute`` in ``zero_shot_labels(attribute)[0]`` (None if undefined)."""
    if attribute == "colour":
        return list(COLOURS).index(attrs.colour)
    if attribute == "shape":
        return None if attrs.shape is None else SHAPES.index(attrs.shape)
    if attribute == "position":
        return None if attrs.position is None else POSITIONS.index(attrs.position)
    if attribute == "place":
        return PLACES.index(attrs.place)
    if attribute == "count":
        return attrs.count - 1
    if attribute == "size":
        return SIZES.index(attrs.size)
    if attribute == "bird":
        return None if attrs.bird is None else BIRDS.index(attrs.bird)
    raise ValueError(f"unknown attribute {attribute!r}")


# --------------------------------------------------------------------------------------------- torch datasets


def _item(scene: Scene, transform: Callable | None) -> dict:
    image = scene.pil()
    return {
        "image": transform(image) if transform is not None else image,
        "caption": scene.caption,
        "attributes": scene.attributes.as_dict(),
        "mask": torch.from_numpy(scene.foreground),
        "object_masks": torch.from_numpy(scene.masks),
    }


class ShapesDataset(Dataset):
    """``n`` shape scenes; item ``i`` is rendered from the seed stream (seed, i), so access order is free.

    Items are dicts: image (PIL, or ``transform(PIL)``), caption, attributes (dict), mask (union foreground
    [H, W] bool) and object_masks ([n_obj, H, W] bool). Use ``collate_scenes`` with a DataLoader.
    """

    def __init__(self, n: int, seed: int = 0, transform: Callable | None = None, world: ShapesWorld | None = None):
        if n <= 0:
            raise ValueError("n must be positive")
        self.n, self.seed, self.transform = n, seed, transform
        self.world = world if world is not None else ShapesWorld(seed=seed)

    def __len__(self) -> int:
        return self.n

    def scene(self, i: int) -> Scene:
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.world.sample(np.random.default_rng([self.seed, i, 101]))

    def __getitem__(self, i: int) -> dict:
        return _item(self.scene(i), self.transform)


class SpuriousBirdsDataset(ShapesDataset):
    """Landbird/waterbird scenes with a spurious place cue.

    split='train': bird and place group agree with probability SPURIOUS_AGREEMENT.
    split='eval': item i belongs to group i % 4 (group = 2 * bird_index + place_group_index), so the four
    groups are balanced. Items add ``label`` (bird index in BIRDS) and ``group`` to the ShapesDataset dict.
    """

    def __init__(self, n: int, seed: int = 0, split: str = "eval", transform: Callable | None = None,
                 world: ShapesWorld | None = None, bird_size: str | None = None):
        if bird_size is not None and bird_size not in _BIRD_RADIUS:
            raise ValueError(f"bird_size must be one of {tuple(_BIRD_RADIUS)}, got {bird_size!r}")
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        super().__init__(n, seed, transform, world)
        self.split, self.bird_size = split, bird_size

    def scene(self, i: int) -> Scene:
        if not 0 <= i < self.n:
            raise IndexError(i)
        rng = np.random.default_rng([self.seed, i, 202])
        return self.world.sample_bird(rng, self.split, i % 4 if self.split == "eval" else None, self.bird_size)

    def __getitem__(self, i: int) -> dict:
        scene = self.scene(i)
        item = _item(scene, self.transform)
        item["label"] = BIRDS.index(scene.attributes.bird)
        item["group"] = scene.attributes.group
        return item


def collate_scenes(items: list[dict]) -> dict:
    """Batch dataset items: stacks tensor images and masks, keeps captions, attributes, object masks as lists."""
    out: dict = {}
    for key in items[0]:
        values = [it[key] for it in items]
        if key == "image" and isinstance(values[0], torch.Tensor) or key == "mask":
            out[key] = torch.stack(values)
        elif key in ("label", "group") and all(v is not None for v in values):
            out[key] = torch.tensor(values)
        else:
            out[key] = values
    return out
