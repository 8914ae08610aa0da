"""The hard toy world: scenes hold more than a caption says, so retrieval methods separate.

A scene is one coloured shape on a plain background, with a surface pattern and perhaps a second,
small object (a mark) in a top corner::

    shape       circle square triangle star
    colour      red green blue yellow
    pattern     plain striped dotted
    position    left right
    background  black white gray
    mark        none dot ring

Every combination (4 x 4 x 3 x 2 x 3 x 3 = 864) is one gallery image, so each scene has
near-duplicates that differ only in the pattern or the mark.

A description mentions the shape and the colour, and any subset of the other attributes:
"a striped red circle on the left on a black background with a small dot" (all of them), "a red
circle on a black background" (two left out). The toy captioner is trained on descriptions whose
optional attributes are each mentioned with the probability in MENTION: its most likely caption
leaves out the pattern and the mark, and sampled captions mention them now and then, so several
samples together tell more than one. The reference image itself shows everything: fusing its
vector into the query, or a judge that compares the two images, recovers what captions drop.

The benchmark (CIRR's layout, one data directory per split) has a validation split, for choosing
parameters, and a held-out test split.
"""

from __future__ import annotations

import hashlib
import io
import random
from dataclasses import dataclass, replace
from itertools import product
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from cirkit.toy.benchmark import ToyQuery, _json, _write_if_changed, numbered_names
from cirkit.toy.world import Modification, _a, _gradient, _outline, _shade, seed_for

SHAPES = ("circle", "square", "triangle", "star")
COLOURS = {"red": (215, 40, 40), "green": (40, 160, 65), "blue": (40, 90, 220), "yellow": (235, 210, 35)}
PATTERNS = ("plain", "striped", "dotted")
POSITIONS = ("left", "right")
BACKGROUNDS = {"black": (22, 22, 26), "white": (238, 238, 234), "gray": (125, 125, 128)}
MARKS = ("none", "dot", "ring")
ATTRIBUTES = ("shape", "colour", "pattern", "position", "background", "mark")
OPTIONAL = ("pattern", "position", "background", "mark")
# how often a caption of the training data mentions each optional attribute
MENTION = {"pattern": 0.4, "position": 0.85, "background": 0.85, "mark": 0.4}

IMAGE_SIZE = 96
_SUPERSAMPLE = 2
_X = {"left": 0.34, "right": 0.66}
_MARK_X = {"left": 0.84, "right": 0.16}  # the mark sits in the top corner away from the shape
_MARK_PHRASES = {"none": "alone", "dot": "with a small dot", "ring": "with a small ring"}


@dataclass(frozen=True, order=True)
class Scene:
    shape: str
    colour: str
    pattern: str
    position: str
    background: str
    mark: str

    def get(self, attribute: str) -> str:
        return getattr(self, attribute)

    @property
    def slug(self) -> str:
        return "-".join(self.get(a) for a in ATTRIBUTES)

    @property
    def caption(self) -> str:
        """The description with every attribute."""
        return describe(self, ATTRIBUTES)


def values(attribute: str) -> tuple[str, ...]:
    return {
        "shape": SHAPES,
        "colour": tuple(COLOURS),
        "pattern": PATTERNS,
        "position": POSITIONS,
        "background": tuple(BACKGROUNDS),
        "mark": MARKS,
    }[attribute]


def all_scenes() -> list[Scene]:
    return [Scene(*combination) for combination in product(*(values(a) for a in ATTRIBUTES))]


def describe(scene: Scene, mentioned) -> str:
    """The scene described with the attributes in `mentioned` (shape and colour always)."""
    words = ["a"]
    if "pattern" in mentioned:
        words.append(scene.pattern)
    words += [scene.colour, scene.shape]
    if "position" in mentioned:
        words += ["on", "the", scene.position]
    if "background" in mentioned:
        words += ["on", "a", scene.background, "background"]
    if "mark" in mentioned:
        words.append(_MARK_PHRASES[scene.mark])
    return " ".join(words)


def parse_description(text: str) -> dict[str, str] | None:
    """The attributes a description states, or None when the text is not one."""
    rest = text.strip().rstrip(".").lower()
    out: dict[str, str] = {}
    for value, phrase in _MARK_PHRASES.items():
        if rest.endswith(" " + phrase):
            out["mark"], rest = value, rest[: -len(phrase) - 1]
            break
    words = rest.split()
    if words[-4:-2] == ["on", "a"] and words[-1] == "background" and words[-2] in BACKGROUNDS:
        out["background"], words = words[-2], words[:-4]
    if words[-3:-1] == ["on", "the"] and words[-1] in POSITIONS:
        out["position"], words = words[-1], words[:-3]
    if len(words) == 4 and words[1] in PATTERNS:
        out["pattern"], words = words[1], [words[0], *words[2:]]
    if len(words) != 3 or words[0] != "a" or words[1] not in COLOURS or words[2] not in SHAPES:
        return None
    out["colour"], out["shape"] = words[1], words[2]
    return out


def sample_mentions(rng: random.Random) -> tuple[str, ...]:
    """Which attributes a caption mentions, drawn as the captioner's training data draws them."""
    return ("shape", "colour", *(a for a in OPTIONAL if rng.random() < MENTION[a]))


# ---------------------------------------------------------------- rendering


def render(scene: Scene, seed: int, size: int = IMAGE_SIZE) -> Image.Image:
    """The scene drawn as an RGB image, jittered deterministically by `seed`."""
    rng = random.Random(seed)
    shift = rng.randint(-10, 10)
    image = _gradient(size, _shade(tuple(c + shift for c in BACKGROUNDS[scene.background]), rng, 3), rng)
    big = size * _SUPERSAMPLE
    cx = (_X[scene.position] + rng.uniform(-0.03, 0.03)) * big
    cy = (0.56 + rng.uniform(-0.06, 0.06)) * big
    radius = 0.22 * rng.uniform(0.92, 1.08) * big
    angle = rng.uniform(-10, 10) if scene.shape != "circle" else 0.0
    base = _shade(COLOURS[scene.colour], rng, 12)
    fill = _pattern(scene.pattern, base, big, rng).resize((size, size), Image.Resampling.BOX)
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    if scene.shape == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=255)
    else:
        draw.polygon(_outline(scene.shape, cx, cy, radius, angle), fill=255)
    image = Image.composite(fill, image, mask.resize((size, size), Image.Resampling.BOX))
    if scene.mark != "none":
        ink = (20, 20, 20) if scene.background == "white" else (240, 240, 240)
        layer = Image.new("L", (big, big), 0)
        mx = (_MARK_X[scene.position] + rng.uniform(-0.03, 0.03)) * big
        my = (0.17 + rng.uniform(-0.03, 0.03)) * big
        r = 0.07 * rng.uniform(0.9, 1.1) * big
        pen = ImageDraw.Draw(layer)
        if scene.mark == "dot":
            pen.ellipse([mx - r, my - r, mx + r, my + r], fill=255)
        else:
            pen.ellipse([mx - r, my - r, mx + r, my + r], outline=255, width=max(1, round(0.4 * r)))
        image = Image.composite(Image.new("RGB", (size, size), ink), image, layer.resize((size, size), Image.Resampling.BOX))
    return image


def _pattern(pattern: str, rgb: tuple[int, int, int], big: int, rng: random.Random) -> Image.Image:
    """The shape's fill at the supersampled size: the colour, with darker stripes or dots."""
    fill = Image.new("RGB", (big, big), rgb)
    if pattern == "plain":
        return fill
    dark = tuple(int(c * 0.4) for c in rgb)
    draw = ImageDraw.Draw(fill)
    period = big * 0.11
    phase = rng.uniform(0, period)
    if pattern == "striped":
        for k in range(-2 * int(big / period), 2 * int(big / period) + 2):
            x = k * period + phase
            draw.polygon([(x, 0), (x + period / 2, 0), (x + period / 2 - big, big), (x - big, big)], fill=dark)
    else:
        r = period * 0.28
        for i in range(int(big / period) + 2):
            for j in range(int(big / period) + 2):
                x, y = i * period + phase + (period / 2 if j % 2 else 0), j * period + phase
                draw.ellipse([x - r, y - r, x + r, y + r], fill=dark)
    return fill


# ---------------------------------------------------------------- modifications


def _phrases(attribute: str, ref: Scene, new: str) -> list[str]:
    """Ways to ask for `attribute` to become `new`; a few leave the value open (ambiguous)."""
    old = ref.get(attribute)
    if attribute == "colour":
        return [
            f"make it {new}", f"change the colour to {new}", f"change the color to {new}", f"turn it {new}",
            f"{new} instead", f"paint it {new}", f"{_a(new)} {new} one", f"make the {ref.shape} {new}",
            f"{new} instead of {old}", "a different colour",
        ]
    if attribute == "shape":
        return [
            f"make it a {new}", f"a {new} instead", f"change the shape to a {new}", f"replace the {old} with a {new}",
            f"turn it into a {new}", f"a {new} instead of a {old}", f"show a {new}", "a different shape",
        ]
    if attribute == "pattern":
        return {
            "striped": ["make it striped", "add stripes", "with stripes", "give it stripes", "striped instead", "a striped one"],
            "dotted": ["make it dotted", "add dots", "with polka dots", "give it dots", "dotted instead", "a dotted one"],
            "plain": ["make it plain", "remove the pattern", "without a pattern", "a plain one", f"no {'stripes' if old == 'striped' else 'dots'}"],
        }[new] + ["change the pattern"]
    if attribute == "position":
        return [f"move it to the {new}", f"put it on the {new}", f"shift it {new}", f"place it on the {new} side",
                "move it to the other side"]
    if attribute == "background":
        spelled = ["gray", "grey"] if new == "gray" else [new]
        return [
            phrase
            for b in spelled
            for phrase in (f"change the background to {b}", f"put it on a {b} background", f"on {b} instead",
                           f"with a {b} background", f"make the background {b}")
        ] + ["a different background"]
    if attribute == "mark":
        if new == "none":
            return [f"remove the small {old}", f"without the {old}", "just the shape alone", f"take away the little {old}",
                    "nothing else in the picture"]
        return [f"add a small {new}", f"put a little {new} beside it", f"with a small {new}", f"a small {new} in the corner"] + (
            [f"a {new} instead of the {old}"] if old != "none" else []
        )
    raise ValueError(attribute)


def modify(ref: Scene, rng: random.Random, n_changes: int | None = None) -> Modification:
    """A random modification of `ref`: one or two attributes changed, with a random phrasing."""
    n = n_changes or (1 if rng.random() < 0.6 else 2)
    attributes = rng.sample(ATTRIBUTES, n)
    changes = {a: rng.choice([v for v in values(a) if v != ref.get(a)]) for a in attributes}
    target = replace(ref, **changes)
    texts = [rng.choice(_phrases(a, ref, changes[a])) for a in attributes]
    text = texts[0] if n == 1 else f"{texts[0]}{rng.choice([' and ', ', and ', ', '])}{texts[1]}"
    return Modification(text=text, target=target, changed=tuple(sorted(attributes)))


def edit(description: str, modification: Modification) -> str:
    """What the toy LLM learns to write: the description with the changed attributes applied
    (mentioned or not), the others as they were mentioned."""
    stated = parse_description(description)
    if stated is None:
        raise ValueError(f"not a description of the hard toy world: {description!r}")
    mentioned = set(stated) | set(modification.changed)
    return describe(replace(Scene(**{a: stated.get(a, modification.target.get(a)) for a in ATTRIBUTES}),
                            **{a: modification.target.get(a) for a in modification.changed}), mentioned)


# ---------------------------------------------------------------- the benchmark (CIRR's layout)

GALLERY_SEED = 4048
SPLIT_SEEDS = {"val": 11, "test": 12}
NUM_QUERIES = {"val": 200, "test": 200}
SPLITS = tuple(SPLIT_SEEDS)
CIRR_SPLIT = "val"  # each split's data directory is read as CIRR's val split
FOLDER = "dev"


def gallery_names() -> dict[Scene, str]:
    return numbered_names(all_scenes(), GALLERY_SEED, FOLDER)


def gallery_image(scene: Scene) -> Image.Image:
    return render(scene, seed_for("hard-gallery", GALLERY_SEED, scene.slug))


def queries(split: str) -> list[ToyQuery]:
    """The split's queries: distinct (reference, target) pairs, none shared between the splits."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: one of {', '.join(SPLITS)}")
    taken: set[tuple[Scene, Scene]] = set()
    for earlier in SPLITS[: SPLITS.index(split)]:
        taken |= {(q.reference, q.target) for q in queries(earlier)}
    rng = random.Random(SPLIT_SEEDS[split])
    scenes = all_scenes()
    out: list[ToyQuery] = []
    while len(out) < NUM_QUERIES[split]:
        reference = rng.choice(scenes)
        mod = modify(reference, rng)
        if (reference, mod.target) in taken:
            continue
        taken.add((reference, mod.target))
        near = [replace(mod.target, **{a: v}) for a in ATTRIBUTES for v in values(a) if v != mod.target.get(a)]
        members = [reference, mod.target, *rng.sample([s for s in near if s != reference], 4)]
        rng.shuffle(members)
        out.append(ToyQuery(len(out), reference, mod, tuple(members)))
    return out


def held_out_pairs() -> set[tuple[Scene, Scene]]:
    """The (reference, target) pairs of both splits: the training data never holds one."""
    return {(q.reference, q.target) for split in SPLITS for q in queries(split)}


def captions_records(split: str) -> list[dict[str, Any]]:
    names = gallery_names()
    records = []
    for q in queries(split):
        members = [names[s] for s in q.members]
        records.append({
            "pairid": q.pairid,
            "reference": names[q.reference],
            "target_hard": names[q.target],
            "target_soft": {names[q.target]: 1.0},
            "caption": q.modification.text,
            "img_set": {"id": q.pairid, "members": members, "reference_rank": members.index(names[q.reference]),
                        "target_rank": members.index(names[q.target])},
        })
    return records


def split_record() -> dict[str, str]:
    return {name: f"./{FOLDER}/{name}.png" for name in sorted(gallery_names().values())}


def captions_path(data_dir: Path) -> Path:
    return Path(data_dir) / "cirr" / "captions" / f"cap.rc2.{CIRR_SPLIT}.json"


def split_path(data_dir: Path) -> Path:
    return Path(data_dir) / "cirr" / "image_splits" / f"split.rc2.{CIRR_SPLIT}.json"


def images_root(data_dir: Path) -> Path:
    return Path(data_dir) / "cirr" / "img_raw"


def write_benchmark(data_dir: str | Path, split: str = "test", on_image=None, prune: bool = False) -> dict[str, Path]:
    """Write (or complete, or repair) one split of the hard benchmark under `data_dir`, read by
    `cirkit eval cirr --split val`. Idempotent; every file goes through a temporary file."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: one of {', '.join(SPLITS)}")
    data_dir = Path(data_dir)
    folder = images_root(data_dir) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    names = gallery_names()
    if prune:
        keep = {f"{name}.png" for name in names.values()}
        for path in folder.iterdir():
            if path.name not in keep and (path.is_file() or path.is_symlink()):
                path.unlink()
    for scene, name in sorted(names.items(), key=lambda kv: kv[1]):
        buffer = io.BytesIO()
        gallery_image(scene).save(buffer, format="PNG")
        _write_if_changed(folder / f"{name}.png", buffer.getvalue())
        if on_image:
            on_image()
    _write_if_changed(split_path(data_dir), _json(split_record()))
    _write_if_changed(captions_path(data_dir), _json(captions_records(split)))
    return {"captions": captions_path(data_dir), "image_split": split_path(data_dir), "images": images_root(data_dir)}


def fingerprint() -> str:
    """A digest of the world as its models were trained for it (descriptions, names, queries)."""
    h = hashlib.sha256()
    for scene in all_scenes():
        h.update(scene.caption.encode())
    h.update(_json(split_record()))
    for split in SPLITS:
        h.update(_json(captions_records(split)))
    return h.hexdigest()

