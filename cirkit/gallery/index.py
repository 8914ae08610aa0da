"""The gallery index: CLIP image vectors of a folder, a FAISS index over them, and a manifest.

Layout of an index directory:
    manifest.json          model identity, root, entries (path, sha256), skipped files, file names below
    vectors-<digest>.npy   L2-normalized float32 vectors, row i = manifest entry i
    index-<digest>[-<type>].faiss   FAISS inner-product index over those vectors (type and params in
                           the manifest: flat, hnsw or ivfpq, see cirkit.gallery.ann)
    cache/                 embedded vectors by image content hash, written in shards as they come

Building is resumable: after an interruption (Ctrl-C, kill -9) the same command embeds only what
the cache lacks, in the same batches, and writes the same index. The manifest is written last
and atomically, so an index directory is always either the previous index or the new one.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cirkit.gallery import ann
from cirkit.console import progress_bar
from cirkit.errors import CirkitError, ImageError, one_line
from cirkit.images import DEFAULT_MAX_PIXELS, image_sha256, iter_image_files, load_image

FORMAT = 1
MANIFEST = "manifest.json"
CACHE = "cache"
SHARD_IMAGES = 1024  # images per cache shard (rounded to whole batches)


@dataclass
class BuildReport:
    directory: Path
    count: int = 0
    embedded: int = 0
    reused: int = 0
    removed: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    index: ann.IndexSpec = field(default_factory=lambda: ann.IndexSpec("flat"))
    index_built: bool = True  # False when the FAISS index of the same vectors and spec was kept


class GalleryIndex:
    """A built index, opened for search."""

    def __init__(self, directory: Path, manifest: dict[str, Any], vectors: np.ndarray, faiss_index: Any):
        self.directory = directory
        self.manifest = manifest
        self.vectors = vectors
        self.faiss_index = faiss_index
        self.paths = [e["path"] for e in manifest["entries"]]
        self.root = Path(manifest["root"])
        self.index_spec = ann.from_manifest(manifest)

    @classmethod
    def open(cls, directory: str | Path) -> GalleryIndex:
        import faiss

        directory = Path(directory)
        manifest = read_manifest(directory)
        if manifest is None:
            raise CirkitError(f"no gallery index in {directory}: build one with `cirkit index IMAGES_DIR --out {directory}`")
        try:
            vectors = np.load(directory / manifest["vectors_file"], mmap_mode="r")
            faiss_index = faiss.read_index(str(directory / manifest["index_file"]))
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise CirkitError(f"gallery index in {directory} is damaged ({one_line(exc)}): re-run `cirkit index`") from None
        if not (len(vectors) == faiss_index.ntotal == len(manifest["entries"])):
            raise CirkitError(f"gallery index in {directory} is inconsistent: re-run `cirkit index`")
        ann.configure(faiss_index, ann.from_manifest(manifest))
        return cls(directory, manifest, vectors, faiss_index)

    @property
    def identity(self) -> dict[str, Any]:
        return self.manifest["model"]

    def __len__(self) -> int:
        return len(self.paths)

    @functools.cached_property
    def row_of(self) -> dict[str, int]:
        """The row (in the vectors and the FAISS index) of each gallery path."""
        return {path: row for row, path in enumerate(self.paths)}

    def check_model(self, identity: dict[str, Any]) -> None:
        """Refuse a query embedded by a CLIP model other than the one that built the index."""
        from cirkit.engines.open_clip_engine import clip_identity_text

        if identity != self.identity:
            raise CirkitError(
                f"the index in {self.directory} was built with CLIP {clip_identity_text(self.identity)}, "
                f"but this pipeline embeds with {clip_identity_text(identity)}: "
                "query with the same CLIP model or build a new index with this one"
            )

    def search(self, queries: np.ndarray, k: int) -> list[list[dict[str, Any]]]:
        """For each query vector, the top k images: [{rank, path, file, score}]."""
        k = min(k, len(self.paths))
        if k == 0:
            return [[] for _ in queries]
        # approximate index types re-score their candidates from self.vectors: exact cosines either way
        scores, ids = ann.search(self.faiss_index, self.vectors, self.index_spec, queries, k)
        return [
            [
                {"rank": r + 1, "path": self.paths[i], "file": str(self.root / self.paths[i]), "score": float(s)}
                for r, (i, s) in enumerate(zip(row_ids, row_scores))
                if i >= 0
            ]
            for row_ids, row_scores in zip(ids, scores)
        ]


def read_manifest(directory: Path) -> dict[str, Any] | None:
    path = directory / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CirkitError(f"{path}: unreadable manifest ({one_line(exc)})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CirkitError(f"{path}: not a cirkit index manifest (format {FORMAT})")
    return manifest


def build_index(
    images_dir: str | Path,
    out_dir: str | Path,
    clip: Any,
    *,
    batch_size: int | None = None,
    workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = True,
    files: list[str] | None = None,
    embedder: Callable[..., Iterator] | None = None,
    index_type: str | None = None,
    index_params: dict[str, int] | None = None,
) -> BuildReport:
    """Index every image under `images_dir` into `out_dir`, reusing whatever is already there.

    `files` (paths relative to `images_dir`) restricts the gallery to those images, e.g. a
    benchmark split's gallery; a listed file that does not exist is skipped as missing.
    `embedder` embeds elsewhere (e.g. `cirkit.gallery.ray_embed.RayEmbedder`): called like `_embed`, it yields
    the same batches of (hashes, vectors, failures), in any order.
    `index_type` (auto, flat, hnsw, ivfpq; see cirkit.gallery.ann) and `index_params` (overrides of the
    params chosen by size) default to what the previous build of `out_dir` was asked, else auto.
    The FAISS index is rebuilt from the cached vectors, so switching types embeds nothing.
    """
    import faiss

    root = Path(images_dir).expanduser().resolve()
    out = Path(out_dir).expanduser()
    if not root.is_dir():
        raise CirkitError(f"not a folder: {images_dir}")
    identity = clip.identity
    files = [root / f for f in files] if files is not None else iter_image_files(root)
    if index_type is not None:  # refuse before touching `out` (e.g. ivfpq on a gallery too small to train)
        ann.choose(index_type, len(files), identity["dim"], index_params)
    _prepare_out_dir(out, identity)
    precision = _check_precision(out, getattr(clip, "precision", "fp32"))
    batch_size = batch_size or getattr(clip, "batch_size", 64)
    previous = read_manifest(out)
    report = BuildReport(directory=out)

    known = {e["path"]: e for e in (previous or {}).get("entries", [])} if previous and previous["root"] == str(root) else {}
    entries: list[dict[str, Any]] = []
    with progress_bar(progress) as bar:
        task = bar.add_task("hashing", total=len(files))
        for path in files:
            rel = path.relative_to(root).as_posix()
            try:
                st = path.stat()
                old = known.get(rel)
                if old and old["size"] == st.st_size and old["mtime_ns"] == st.st_mtime_ns:
                    sha = old["sha256"]
                else:
                    sha = image_sha256(path)
                entries.append({"path": rel, "sha256": sha, "size": st.st_size, "mtime_ns": st.st_mtime_ns})
            except FileNotFoundError:
                report.skipped.append({"path": rel, "reason": "missing file"})
            except (OSError, ImageError) as exc:
                report.skipped.append({"path": rel, "reason": str(exc) if isinstance(exc, ImageError) else one_line(exc)})
            bar.advance(task)

    cache = _Cache(out / CACHE)
    todo: dict[str, Path] = {}
    for e in entries:
        if e["sha256"] not in cache.vectors and e["sha256"] not in todo and not _still_fails(cache.failed.get(e["sha256"]), max_pixels):
            todo[e["sha256"]] = root / e["path"]
    report.reused = len({e["sha256"] for e in entries} - set(todo))

    if todo:
        shard_batches = max(1, SHARD_IMAGES // batch_size)
        pending: list[tuple[list[str], np.ndarray, list[tuple[str, str]]]] = []
        with progress_bar(progress) as bar:
            task = bar.add_task("embedding", total=len(todo))
            batches = (embedder or _embed)(list(todo.items()), clip, batch_size, workers, max_pixels)
            try:
                for hashes, vectors, failures in batches:
                    pending.append((hashes, vectors, failures))
                    report.embedded += len(hashes)
                    bar.advance(task, len(hashes) + len(failures))
                    if len(pending) >= shard_batches:
                        cache.write_shard(pending)
                        pending = []
            finally:
                cache.write_shard(pending)  # whole batches only, so a resumed run forms the same batches
                getattr(batches, "close", lambda: None)()  # stops the embedder's workers now, not at garbage collection

    for e in entries:
        reason = cache.failed.get(e["sha256"])
        if reason and e["sha256"] not in cache.vectors:
            report.skipped.append({"path": e["path"], "reason": reason})
    entries = [e for e in entries if e["sha256"] in cache.vectors]
    report.skipped.sort(key=lambda s: s["path"])
    dim = identity["dim"]
    vectors = np.stack([cache.vectors[e["sha256"]] for e in entries]) if entries else np.zeros((0, dim), np.float32)
    # the index type: as asked, else as the previous build was asked (auto picks by size)
    choice = index_type or (previous or {}).get("index_choice", "auto")
    overrides = dict(index_params or {}) if index_type else (previous or {}).get("index_overrides", {})
    report.index = spec = ann.choose(choice, len(entries), dim, overrides)
    digest = hashlib.sha256(vectors.tobytes()).hexdigest()[:16]
    vectors_file = f"vectors-{digest}.npy"
    index_file = f"index-{digest}.faiss" if spec.exact else f"index-{digest}-{spec.type}.faiss"
    _atomic_write(out / vectors_file, lambda p: np.save(p, vectors))
    report.index_built = not (
        previous and previous.get("index_file") == index_file and ann.from_manifest(previous) == spec
        and (out / index_file).is_file()
    )
    if report.index_built:  # from the vectors in hand (cached): switching types embeds nothing
        index = ann.build(vectors, spec)
        _atomic_write(out / index_file, lambda p: faiss.write_index(index, str(p)))
    manifest = {
        "format": FORMAT,
        "model": identity,
        "precision": precision,
        "root": str(root),
        "dim": dim,
        "count": len(entries),
        "index_type": spec.type,
        "index_params": spec.params,
        "index_choice": choice,
        "index_overrides": overrides,
        "vectors_file": vectors_file,
        "index_file": index_file,
        "updated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "entries": entries,
        "skipped": report.skipped,
    }
    _atomic_write(out / MANIFEST, lambda p: p.write_text(json.dumps(manifest, indent=1), encoding="utf-8"))
    for stale in [*out.glob("vectors-*.npy"), *out.glob("index-*.faiss")]:
        if stale.name not in (vectors_file, index_file):
            stale.unlink(missing_ok=True)
    report.removed = len(set(known) - {f.relative_to(root).as_posix() for f in files})
    report.count = len(entries)
    return report


def _still_fails(reason: str | None, max_pixels: int) -> bool:
    """Whether a cached failure holds: a refusal over --max-pixels holds only under the same limit."""
    if reason is None:
        return False
    limit = re.search(r"exceeds the limit of (\d+)$", reason)
    return limit is None or int(limit.group(1)) == max_pixels


class _Cache:
    """Vectors (and decode failures) by image content hash, in append-only shard files."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.vectors: dict[str, np.ndarray] = {}
        self.failed: dict[str, str] = {}
        self.next_shard = 0
        for shard in sorted(directory.glob("shard-*.npz")):
            try:
                with np.load(shard) as data:
                    self.vectors.update(zip(data["hashes"].tolist(), data["vectors"]))
                    self.failed.update(zip(data["failed_hashes"].tolist(), data["failed_reasons"].tolist()))
            except (OSError, ValueError, KeyError):
                continue  # a damaged shard: its images are embedded again
            self.next_shard = max(self.next_shard, int(shard.stem.split("-")[1]) + 1)

    def write_shard(self, batches: list[tuple[list[str], np.ndarray, list[tuple[str, str]]]]) -> None:
        if not batches:
            return
        hashes = [h for b in batches for h in b[0]]
        vectors = [b[1] for b in batches if len(b[0])]
        failures = [f for b in batches for f in b[2]]
        data = {
            "hashes": np.array(hashes, dtype=str),
            "vectors": np.concatenate(vectors) if vectors else np.zeros((0, 0), np.float32),
            "failed_hashes": np.array([h for h, _ in failures], dtype=str),
            "failed_reasons": np.array([r for _, r in failures], dtype=str),
        }
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"shard-{self.next_shard:06d}.npz"
        _atomic_write(path, lambda p: np.savez(p, **data))
        self.next_shard += 1
        self.vectors.update(zip(hashes, data["vectors"]))
        self.failed.update(failures)


class _ImageFiles:
    """A torch Dataset of (hash, preprocessed image as a float32 array or None, failure reason)."""

    def __init__(self, items: list[tuple[str, Path]], preprocess: Any, max_pixels: int):
        self.items, self.preprocess, self.max_pixels = items, preprocess, max_pixels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        sha, path = self.items[i]
        try:
            # as numpy: pickled through the worker pipe, not shared as torch tensors by file descriptor,
            # whose hand-over prints a traceback when Ctrl-C interrupts it
            return sha, self.preprocess(load_image(path, self.max_pixels)).numpy(), None
        except ImageError as exc:
            return sha, None, str(exc)
        except Exception as exc:  # a preprocessing failure on an odd image must not stop the index
            return sha, None, f"cannot preprocess: {one_line(exc)}"


def _collate(batch):
    """(hashes, pixels stacked into one array or None, failures): stacked where it was decoded,
    so the process that runs the model only wraps the array."""
    ok = [(sha, pixels) for sha, pixels, _ in batch if pixels is not None]
    failures = [(sha, reason) for sha, pixels, reason in batch if pixels is None]
    return [sha for sha, _ in ok], np.stack([pixels for _, pixels in ok]) if ok else None, failures


def _default_workers(device: str, items: int, batch_size: int) -> int:
    """Decoding processes when none are asked.

    On CPU the decoders share the cores with the forward pass, which needs ~40x more CPU time per
    image than decoding and preprocessing a photo (ViT-B-32: ~200 core-ms vs ~5): one process
    keeps ahead of it, and more would only take turns on the cores from torch's threads (an
    OpenMP thread that loses its core stalls its siblings at the next barrier). On GPU decoding is
    the bottleneck: as many as the CPU allows, one core left to the process that feeds the GPU.
    """
    if items <= batch_size:
        return 0  # one batch: starting a process costs more than it saves
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if device.startswith("cuda"):
        return max(1, min(16, cpus - 1))
    return 1


def _embed(items, clip, batch_size: int, workers: int | None, max_pixels: int) -> Iterator:
    """Batches of (hashes, vectors, failures) in item order, decoding in worker processes while the model runs.

    Batch i holds items [i * batch_size, (i + 1) * batch_size) whatever the workers, so a resumed
    run forms the same batches. Precision (autocast) is the model's (`clip.precision`).
    """
    import torch
    from torch.utils.data import DataLoader

    if workers is None:
        workers = _default_workers(clip.device, len(items), batch_size)
    on_gpu = clip.device.startswith("cuda")
    loader = DataLoader(
        _ImageFiles(items, clip.preprocess, max_pixels),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate,
        prefetch_factor=(4 if on_gpu else 2) if workers else None,  # batches decoded ahead, per worker
        persistent_workers=False,
        worker_init_fn=_ignore_ctrl_c if workers else None,
    )
    for hashes, pixels, failures in loader:
        if pixels is None:
            yield [], np.zeros((0, clip.dim), np.float32), failures
            continue
        yield hashes, clip.encode_images(torch.from_numpy(pixels)), failures


def _ignore_ctrl_c(_worker_id: int) -> None:
    """Decode workers leave Ctrl-C to the main process, which stops them (else each exit waits 5 s)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _check_precision(out: Path, precision: str) -> str:
    """Refuse to mix vectors computed in another precision into the cache of `out` (they are close, not equal)."""
    path = out / CACHE / "precision.txt"
    built = path.read_text().strip() if path.is_file() else (read_manifest(out) or {}).get("precision")
    if built and built != precision:
        raise CirkitError(
            f"{out} holds vectors computed in {built}, not {precision}: "
            f"run with --precision {built} to update it, or choose another --out directory"
        )
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, lambda p: p.write_text(precision + "\n"))
    return precision


def _prepare_out_dir(out: Path, identity: dict[str, Any]) -> None:
    from cirkit.engines.open_clip_engine import clip_identity_text

    if out.exists() and not out.is_dir():
        raise CirkitError(f"--out {out} is a file, not a directory")
    model_file = out / CACHE / "model.json"
    if out.is_dir() and not _left_empty(out):
        if not model_file.is_file() and read_manifest(out) is None:
            raise CirkitError(f"{out} is not empty and holds no cirkit index: choose a new or empty directory")
        try:
            built_with = json.loads(model_file.read_text()) if model_file.is_file() else read_manifest(out)["model"]
        except (OSError, ValueError) as exc:
            raise CirkitError(f"{model_file}: unreadable ({one_line(exc)})") from None
        if built_with != identity:
            raise CirkitError(
                f"{out} holds an index built with CLIP {clip_identity_text(built_with)}, not "
                f"{clip_identity_text(identity)}: choose another --out directory"
            )
    else:
        (out / CACHE).mkdir(parents=True, exist_ok=True)
        _atomic_write(model_file, lambda p: p.write_text(json.dumps(identity, indent=1)))


def _left_empty(out: Path) -> bool:
    """Empty, or holding only what a first run stopped before its first write left: a cache folder
    with nothing in it but temporary files."""
    entries = list(out.iterdir())
    if not entries:
        return True
    cache = entries[0]
    return len(entries) == 1 and cache.name == CACHE and cache.is_dir() and all(p.name.startswith(".tmp-") for p in cache.iterdir())


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same directory (same suffix), then rename over `path`."""
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
