"""Synthetic captioned shapes: specs, a deterministic renderer and a fixed caption grammar."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

IMAGE_SIZE = 64
SUPERSAMPLE = 4

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 220),
    "yellow": (245, 220, 40),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "orange": (245, 140, 20),
    "purple": (140, 50, 180),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond")
SIZES: dict[str, float] = {"small": 9.0, "large": 15.0}  # half extent in pixels at 64 px
POSITIONS: dict[str, tuple[float, float]] = {
    "center": (0.5, 0.5),
    "top left": (0.27, 0.27),
    "top right": (0.73, 0.27),
    "bottom left": (0.27, 0.73),
    "bottom right": (0.73, 0.73),
}
JITTER_PX = 2


@dataclass(frozen=True)
class ShapeSpec:
    """One image: a shape of a colour, size and position on a coloured background."""

    shape: str
    color: str
    background: str
    size: str
    position: str
    dx: int = 0
    dy: int = 0

    @property
    def key(self) -> tuple[str, str, str, str, str]:
        """The attributes that the caption names (no jitter)."""
        return (self.shape, self.color, self.background, self.size, self.position)


def vocabulary() -> list[str]:
    """Every word that the caption grammar can produce, in a fixed order."""
    words = ["a", "in", "the", "on", "background"]
    words += list(COLORS) + list(SHAPES) + list(SIZES)
    for position in POSITIONS:
        words += position.split()
    seen: dict[str, None] = {}
    for word in words:
        seen.setdefault(word, None)
    return list(seen)


def caption(spec: ShapeSpec) -> str:
    """The caption of a spec, e.g. 'a small red circle in the top left on a blue background'."""
    return (
        f"a {spec.size} {spec.color} {spec.shape} in the {spec.position} "
        f"on a {spec.background} background"
    )


def varied_caption(spec: ShapeSpec, rng: random.Random, leave_out: float = 0.3) -> str:
    """The caption, leaving out the size and the position each with probability `leave_out`.

    Training on both forms lets short prompts such as 'a red circle on a blue background' keep
    their colours in place; the size and position then come out at random.
    """
    size = "" if rng.random() < leave_out else f"{spec.size} "
    where = "" if rng.random() < leave_out else f"in the {spec.position} "
    return f"a {size}{spec.color} {spec.shape} {where}on a {spec.background} background"


def all_keys() -> list[tuple[str, str, str, str, str]]:
    """Every (shape, colour, background, size, position) combination with colour != background."""
    return [
        (shape, color, background, size, position)
        for shape in SHAPES
        for color in COLORS
        for background in COLORS
        if background != color
        for size in SIZES
        for position in POSITIONS
    ]


def is_held_out(key: tuple[str, str, str, str, str]) -> bool:
    """Whether a combination is kept out of training (about one in ten, fixed)."""
    digest = sum((i + 1) * ord(ch) for i, ch in enumerate("|".join(key)))
    return digest % 10 == 0


def random_spec(rng: random.Random, held_out: bool | None = False) -> ShapeSpec:
    """Draw a spec; held_out=False gives training combinations, True held-out ones, None any."""
    while True:
        key = (
            rng.choice(SHAPES),
            rng.choice(list(COLORS)),
            rng.choice(list(COLORS)),
            rng.choice(list(SIZES)),
            rng.choice(list(POSITIONS)),
        )
        dx = rng.randint(-JITTER_PX, JITTER_PX)
        dy = rng.randint(-JITTER_PX, JITTER_PX)
        if key[1] == key[2]:
            continue
        if held_out is None or is_held_out(key) == held_out:
            return ShapeSpec(*key, dx=dx, dy=dy)


def shape_polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    """The polygon of a shape centred at (cx, cy) with half extent r (None for a circle)."""
    if shape == "circle":
        return None
    if shape == "square":
        h = r * 0.85
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + 0.8 * r), (cx - r, cy + 0.8 * r)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + 0.8 * r, cy), (cx, cy + r), (cx - 0.8 * r, cy)]
    if shape == "star":
        points = []
        for i in range(10):
            radius = r if i % 2 == 0 else 0.45 * r
            angle = -math.pi / 2 + i * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle) + 0.1 * r))
        return points
    raise ValueError(f"unknown shape {shape!r}")


def rgb(color: str) -> tuple[int, int, int]:
    """The RGB value of a colour name from COLORS or of a '#rrggbb' string."""
    if color.startswith("#") and len(color) == 7:
        return (int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16))
    return COLORS[color]


def random_rgb_spec(rng: random.Random) -> ShapeSpec:
    """A spec with arbitrary '#rrggbb' shape and background colours (for the autoencoder only).

    The autoencoder learns from these as well as from the palette, so that its latent space can
    hold colours the captions never name, as a LoRA teaching a new colour needs.
    """
    spec = random_spec(rng, held_out=None)
    colors = ["#" + "".join(f"{rng.randrange(256):02x}" for _ in range(3)) for _ in range(2)]
    return ShapeSpec(spec.shape, colors[0], colors[1], spec.size, spec.position, spec.dx, spec.dy)


def render(spec: ShapeSpec, size: int = IMAGE_SIZE) -> Image.Image:
    """Render a spec as an anti-aliased RGB image of size x size pixels."""
    big = size * SUPERSAMPLE
    scale = big / IMAGE_SIZE
    image = Image.new("RGB", (big, big), rgb(spec.background))
    draw = ImageDraw.Draw(image)
    fx, fy = POSITIONS[spec.position]
    cx = (fx * IMAGE_SIZE + spec.dx) * scale
    cy = (fy * IMAGE_SIZE + spec.dy) * scale
    r = SIZES[spec.size] * scale
    fill = rgb(spec.color)
    polygon = shape_polygon(spec.shape, cx, cy, r)
    if polygon is None:
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        draw.polygon(polygon, fill=fill)
    return image.resize((size, size), Image.Resampling.BOX)


def spec_from_key(key: tuple[str, str, str, str, str]) -> ShapeSpec:
    """A spec without jitter from a (shape, colour, background, size, position) key."""
    return ShapeSpec(*key)


def eval_specs(count: int = 40, seed: int = 1234, held_out: bool | None = True) -> list[ShapeSpec]:
    """A fixed list of specs for evaluation (held-out combinations by default)."""
    rng = random.Random(seed)
    return [spec_from_key(random_spec(rng, held_out=held_out).key) for _ in range(count)]
