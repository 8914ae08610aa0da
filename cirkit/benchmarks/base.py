"""The common data model of every benchmark: queries, a gallery of named images, and where they live."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cirkit.benchmarks.crops import Box
from cirkit.errors import CirkitError


@dataclass(frozen=True)
class CirQuery:
    """One composed-retrieval query: a reference image and a text saying what to change.

    - ``id``: the benchmark's query id as a string (CIRR pairid, CIRCO id, ``dress-17`` ...).
    - ``reference``: the gallery name of the reference image.
    - ``text``: the modification text (FashionIQ: ``"c0 and c1"``, GeneCIS: the condition).
    - ``targets``: gallery names of the ground truth images; empty when the split hides them.
      CIRCO lists every ground truth, the target the caption was written for first.
    - ``candidates``: the per-query candidate set when the protocol ranks one (CIRR
      ``img_set.members``, GeneCIS ``[target] + gallery``), else None.
    - ``extra``: benchmark-specific fields (CIRCO ``shared_concept`` and ``semantic_aspects``,
      FashionIQ ``captions`` and ``category``, GeneCIS ``task`` ...).
    """

    id: str
    reference: str
    text: str
    targets: tuple[str, ...] = ()
    candidates: tuple[str, ...] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ImageCheck:
    """Which gallery images exist on disk (a file check only; nothing is decoded)."""

    total: int
    missing: tuple[str, ...]

    @property
    def present(self) -> int:
        return self.total - len(self.missing)

    def __repr__(self) -> str:
        head = ", ".join(repr(n) for n in self.missing[:3]) + (", ..." if len(self.missing) > 3 else "")
        return f"ImageCheck(total={self.total}, missing={len(self.missing)} [{head}])"


@dataclass
class Benchmark:
    """A loaded benchmark split.

    ``gallery`` maps each image name to its path relative to ``data_dir`` (POSIX separators).
    ``boxes`` maps names that stand for an object instance (GeneCIS attribute tasks) to the
    instance box; :meth:`load_image` crops those the way the official code does.
    ``protocol`` names the evaluation protocol (``cirr``, ``circo``, ``fashioniq``, ``genecis``,
    ``triplets``); ``name`` is what :func:`cirkit.benchmarks.load` was given.
    """

    name: str
    split: str
    protocol: str
    queries: list[CirQuery]
    gallery: dict[str, str]
    data_dir: Path
    has_ground_truth: bool
    boxes: dict[str, Box] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    _by_id: dict[str, CirQuery] | None = field(default=None, repr=False, compare=False)

    def __repr__(self) -> str:
        return (f"Benchmark(name={self.name!r}, split={self.split!r}, queries={len(self.queries)}, "
                f"gallery={len(self.gallery)}, data_dir={str(self.data_dir)!r})")

    @property
    def title(self) -> str:
        return f"{self.name} {self.split}"

    def query(self, query_id: str) -> CirQuery:
        if self._by_id is None:
            self._by_id = {q.id: q for q in self.queries}
        try:
            return self._by_id[str(query_id)]
        except KeyError:
            raise CirkitError(f"{self.title}: no query with id '{query_id}'") from None

    @property
    def query_ids(self) -> list[str]:
        return [q.id for q in self.queries]

    def image_path(self, name: str) -> Path:
        """Absolute path of a gallery image (it may not exist: see :meth:`check_images`)."""
        try:
            rel = self.gallery[name]
        except KeyError:
            raise CirkitError(f"{self.title}: '{name}' is not in the gallery") from None
        return self.data_dir / rel

    def load_image(self, name: str):
        """The image as upright RGB (PIL), cropped to its instance box when it has one."""
        from cirkit.errors import ImageError
        from cirkit.images import load_image

        path = self.image_path(name)
        try:
            image = load_image(path)
        except ImageError as e:
            raise ImageError(f"{path}: {e}") from None
        box = self.boxes.get(name)
        if box is not None:
            from cirkit.benchmarks.crops import crop_instance

            image = crop_instance(image, box)
        return image

    def check_images(self) -> ImageCheck:
        """Count the gallery images whose file is missing under ``data_dir``."""
        seen: dict[str, bool] = {}
        missing = []
        for name, rel in self.gallery.items():
            ok = seen.get(rel)
            if ok is None:
                ok = seen[rel] = (self.data_dir / rel).is_file()
            if not ok:
                missing.append(name)
        return ImageCheck(total=len(self.gallery), missing=tuple(missing))

    def __len__(self) -> int:
        return len(self.queries)


def check_split(bench: str, split: str, valid: tuple[str, ...] | list[str]) -> None:
    if split not in valid:
        raise CirkitError(f"{bench}: unknown split '{split}'; valid splits: {', '.join(valid)}")


def looks_like_inside(data_dir: Path, folder: str, markers: tuple[str, ...]) -> str:
    """A hint when DATA_DIR seems to point at the benchmark folder itself instead of its parent."""
    if not (data_dir / folder).exists() and any((data_dir / m).exists() for m in markers):
        return f"; {data_dir} looks like the {folder}/ folder itself: pass its parent as DATA_DIR"
    return ""
