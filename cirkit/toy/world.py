"""The toy world: procedural images drawn with PIL, captions from a grammar, and modifications.

A scene is one coloured shape on a plain background::

    shape       circle square triangle star heart
    colour      red orange yellow green blue purple
    size        small large
    position    left center right
    background  black white gray

Its caption comes from one grammar: "a large red circle on the left of a black background".
Every combination (5 x 6 x 2 x 3 x 3 = 540) is one gallery image. Each rendering jitters the exact
place, size, rotation, colour shade and background gradient, deterministically from a seed, so no
two renderings are the same picture.

A modification changes one or two attributes of a scene, phrased in many ways ("make it blue",
"same shape but green and on white", "change the background to gray"); applying it to the
reference scene gives the target scene.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass, replace
from itertools import product

from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "heart")
COLOURS = {
    "red": (215, 40, 40),
    "orange": (240, 140, 25),
    "yellow": (235, 210, 35),
    "green": (40, 160, 65),
    "blue": (40, 90, 220),
    "purple": (140, 65, 190),
}
SIZES = ("small", "large")
POSITIONS = ("left", "center", "right")
BACKGROUNDS = {"black": (22, 22, 26), "white": (238, 238, 234), "gray": (125, 125, 128)}

POSITION_PHRASES = {"left": "on the left", "center": "in the center", "right": "on the right"}
ATTRIBUTES = ("shape", "colour", "size", "position", "background")

IMAGE_SIZE = 128
_SUPERSAMPLE = 2
_X = {"left": 0.27, "center": 0.5, "right": 0.73}
_RADIUS = {"small": 0.11, "large": 0.2}


@dataclass(frozen=True, order=True)
class Scene:
    shape: str
    colour: str
    size: str
    position: str
    background: str

    @property
    def caption(self) -> str:
        """The grammar caption: "a large red circle on the left of a black background"."""
        return (
            f"a {self.size} {self.colour} {self.shape} {POSITION_PHRASES[self.position]} "
            f"of a {self.background} background"
        )

    @property
    def slug(self) -> str:
        return f"{self.size}-{self.colour}-{self.shape}-{self.position}-{self.background}"

    def get(self, attribute: str) -> str:
        return getattr(self, attribute)


def all_scenes() -> list[Scene]:
    """Every scene of the world, in a fixed order."""
    return [
        Scene(shape, colour, size, position, background)
        for shape, colour, size, position, background in product(SHAPES, COLOURS, SIZES, POSITIONS, BACKGROUNDS)
    ]


def values(attribute: str) -> tuple[str, ...]:
    return {
        "shape": SHAPES,
        "colour": tuple(COLOURS),
        "size": SIZES,
        "position": POSITIONS,
        "background": tuple(BACKGROUNDS),
    }[attribute]


def parse_caption(text: str) -> Scene | None:
    """The scene a grammar caption describes, or None when the text is not one."""
    words = text.strip().rstrip(".").lower().split()
    if len(words) != 11 or words[0] != "a" or words[7:9] != ["of", "a"] or words[10] != "background":
        return None
    size, colour, shape = words[1:4]
    phrase = " ".join(words[4:7])
    position = next((p for p, ph in POSITION_PHRASES.items() if ph == phrase), None)
    background = words[9]
    if position is None:
        return None
    if size not in SIZES or colour not in COLOURS or shape not in SHAPES or background not in BACKGROUNDS:
        return None
    return Scene(shape, colour, size, position, background)


# ---------------------------------------------------------------- rendering


def seed_for(*parts: object) -> int:
    """A stable 64-bit seed from any parts (Python's hash() is salted per process)."""
    digest = hashlib.sha256("\x00".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def render(scene: Scene, seed: int, size: int = IMAGE_SIZE) -> Image.Image:
    """The scene drawn as an RGB image, jittered deterministically by `seed`."""
    rng = random.Random(seed)
    shift = rng.randint(-10, 10)
    background = _gradient(size, _shade(tuple(c + shift for c in BACKGROUNDS[scene.background]), rng, 3), rng)
    big = size * _SUPERSAMPLE  # the shape is drawn larger, then shrunk: smooth edges
    cx = (_X[scene.position] + rng.uniform(-0.03, 0.03)) * big
    cy = (0.5 + rng.uniform(-0.12, 0.12)) * big
    radius = _RADIUS[scene.size] * rng.uniform(0.9, 1.1) * big
    angle = rng.uniform(-10, 10) if scene.shape != "circle" else 0.0
    fill = Image.new("RGB", (size, size), _shade(COLOURS[scene.colour], rng, 14))
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    if scene.shape == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=255)
    else:
        draw.polygon(_outline(scene.shape, cx, cy, radius, angle), fill=255)
    return Image.composite(fill, background, mask.resize((size, size), Image.Resampling.BOX))


def _shade(rgb: tuple[int, int, int], rng: random.Random, spread: int) -> tuple[int, int, int]:
    return tuple(max(0, min(255, c + rng.randint(-spread, spread))) for c in rgb)  # type: ignore[return-value]


def _gradient(size: int, rgb: tuple[int, int, int], rng: random.Random) -> Image.Image:
    """A background with a gentle linear brightness gradient in a random direction."""
    import numpy as np

    strength = rng.uniform(6, 18)
    direction = rng.uniform(0, 2 * math.pi)
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    ramp = np.cos(direction) * axis[None, :] + np.sin(direction) * axis[:, None]  # -0.7 .. 0.7
    pixels = np.asarray(rgb, dtype=np.float32)[None, None, :] + strength * ramp[:, :, None]
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")


def _outline(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        points = [(math.cos(a) * r * 1.25, math.sin(a) * r * 1.25) for a in (math.pi / 4 + k * math.pi / 2 for k in range(4))]
    elif shape == "triangle":
        points = [(math.cos(a) * r * 1.35, math.sin(a) * r * 1.35 + r * 0.2) for a in (-math.pi / 2 + k * 2 * math.pi / 3 for k in range(3))]
    elif shape == "star":
        points = []
        for k in range(10):
            a = -math.pi / 2 + k * math.pi / 5
            rr = r * (1.2 if k % 2 == 0 else 0.52)
            points.append((math.cos(a) * rr, math.sin(a) * rr))
    elif shape == "heart":
        points = []
        for k in range(48):
            t = 2 * math.pi * k / 48
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            points.append((x / 16 * r * 1.05, -(y + 2) / 16 * r * 1.05))
    else:
        raise ValueError(f"unknown shape {shape}")
    ca, sa = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    return [(cx + x * ca - y * sa, cy + x * sa + y * ca) for x, y in points]


# ---------------------------------------------------------------- modifications


@dataclass(frozen=True)
class Modification:
    text: str
    target: Scene
    changed: tuple[str, ...]


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _colour_phrases(ref: Scene, new: str) -> list[str]:
    return [
        f"make it {new}",
        f"change the colour to {new}",
        f"change the color to {new}",
        f"turn it {new}",
        f"{new} instead",
        f"the same but {new}",
        f"paint it {new}",
        f"same {ref.shape} but {new}",
        f"{_a(new)} {new} one",
        f"make the {ref.shape} {new}",
        f"{new} instead of {ref.colour}",
    ]


def _shape_phrases(ref: Scene, new: str) -> list[str]:
    return [
        f"make it a {new}",
        f"a {new} instead",
        f"change the shape to a {new}",
        f"replace the {ref.shape} with a {new}",
        f"turn it into a {new}",
        f"same colour but a {new}",
        f"a {new} instead of a {ref.shape}",
        f"show a {new}",
    ]


def _size_phrases(ref: Scene, new: str) -> list[str]:
    if new == "large":
        return ["make it bigger", "make it larger", "enlarge it", "make it large", "a bigger one", "increase the size", "a large one"]
    return ["make it smaller", "shrink it", "make it small", "a smaller one", "reduce the size", "a small one"]


def _position_phrases(ref: Scene, new: str) -> list[str]:
    if new == "center":
        return ["move it to the center", "center it", "put it in the middle", "move it to the middle", "place it in the center"]
    return [f"move it to the {new}", f"put it on the {new}", f"shift it {new}", f"place it on the {new} side", f"move it {new}"]


def _background_phrases(ref: Scene, new: str) -> list[str]:
    spelled = [new] if new != "gray" else ["gray", "grey"]
    return [
        phrase
        for b in spelled
        for phrase in (
            f"change the background to {b}",
            f"put it on a {b} background",
            f"on {b} instead",
            f"with a {b} background",
            f"same but on {b}",
            f"make the background {b}",
            f"a {b} background instead of {ref.background}",
        )
    ]


_PHRASES = {
    "colour": _colour_phrases,
    "shape": _shape_phrases,
    "size": _size_phrases,
    "position": _position_phrases,
    "background": _background_phrases,
}


def _paired_phrases(ref: Scene, changes: dict[str, str]) -> list[str]:
    """Phrasings written for two attributes at once (besides joining two single phrasings)."""
    keys = set(changes)
    c, s, b = changes.get("colour"), changes.get("shape"), changes.get("background")
    out = []
    if keys == {"colour", "background"}:
        bg = "grey" if b == "gray" else b
        out += [f"same shape but {c} and on {b}", f"make it {c} on a {bg} background", f"{c} on {b} instead"]
    if keys == {"colour", "shape"}:
        out += [f"make it {_a(c)} {c} {s}", f"{_a(c)} {c} {s} instead", f"replace it with {_a(c)} {c} {s}"]
    if keys == {"colour", "size"}:
        out += [f"a {changes['size']} {c} one", f"make it {changes['size']} and {c}"]
    if keys == {"shape", "size"}:
        out += [f"a {changes['size']} {s} instead", f"make it a {changes['size']} {s}"]
    return out


def modify(ref: Scene, rng: random.Random, n_changes: int | None = None) -> Modification:
    """A random modification of `ref`: one or two attributes changed, with a random phrasing."""
    n = n_changes or (1 if rng.random() < 0.6 else 2)
    attributes = rng.sample(ATTRIBUTES, n)
    changes = {a: rng.choice([v for v in values(a) if v != ref.get(a)]) for a in attributes}
    target = replace(ref, **changes)
    if n == 1:
        (a,) = attributes
        text = rng.choice(_PHRASES[a](ref, changes[a]))
    else:
        paired = _paired_phrases(ref, changes)
        if paired and rng.random() < 0.5:
            text = rng.choice(paired)
        else:
            # "same ..." phrasings promise that the rest stays: not with a second change
            first, second = (
                rng.choice([p for p in _PHRASES[a](ref, changes[a]) if not p.startswith("same")]) for a in attributes
            )
            text = f"{first}{rng.choice([' and ', ', and ', ', '])}{second}"
    return Modification(text=text, target=target, changed=tuple(sorted(attributes)))
