"""The Python API: the functions behind the commands, with the same arguments."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from cirkit.engines import ModelPool
from cirkit.errors import CirkitError, one_line
from cirkit.gallery import BuildReport, GalleryIndex, build_index
from cirkit.images import DEFAULT_MAX_PIXELS
from cirkit.pipelines import DEFAULT_PIPELINE, load_pipeline
from cirkit.pipelines.runner import Query, run_queries
from cirkit.store import RunStore


def index_folder(
    images_dir: str | Path,
    out: str | Path,
    *,
    pipeline: str | Path | None = None,
    clip: str | None = None,
    pretrained: str | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = False,
    precision: str = "auto",
    engine: str = "local",
    ray_address: str | None = None,
    ray_actors: int | None = None,
    index_type: str | None = None,
    index_params: dict[str, int] | None = None,
    model_overrides: dict[str, dict[str, Any]] | None = None,
) -> BuildReport:
    """Embed every image under `images_dir` with CLIP and write a gallery index to `out`.

    The CLIP model is `clip` (+ `pretrained`) when given, else the one of `pipeline`
    (default: the built-in `cirevl` pipeline). `engine="ray"` embeds on a Ray cluster
    (`ray_address`: None starts a local Ray instance, or uses this process's; "auto";
    "ray://HEAD:10001") with `ray_actors` model actors; the index is the same as a local build's.
    `index_type`: auto (flat below 1M images, else ivfpq), flat, hnsw or ivfpq; None keeps what `out`
    was built with. `index_params` overrides the params chosen by size (see cirkit.gallery.ann).
    `precision`: auto (fp32 on CPU, bf16 autocast on GPU), fp32, bf16 or fp16 (autocast); recorded in
    the manifest. `batch_size` None: 64 on CPU, 256 on GPU. `model_overrides` replaces model
    entries of the pipeline ({name: entry}, as `--model NAME=SPEC`).
    """
    from cirkit.gallery.ann import INDEX_TYPES
    from cirkit.engines.open_clip_engine import ClipModel, check_precision

    check_precision(precision)

    if index_type is not None and index_type not in INDEX_TYPES:
        raise CirkitError(f"unknown index type '{index_type}': choose one of {', '.join(INDEX_TYPES)}")
    if engine not in ("local", "ray"):
        raise CirkitError(f"unknown engine '{engine}': choose local or ray")
    if engine == "local" and (ray_address or ray_actors):
        raise CirkitError("--ray-address and --ray-actors go with --engine ray")
    if engine == "ray":
        from cirkit.gallery.ray_embed import import_ray

        import_ray()  # a missing Ray is said before any work

    dtype, preprocess = "auto", None
    if not clip:
        spec = load_pipeline(pipeline or DEFAULT_PIPELINE, model_overrides=model_overrides).clip_model()
        clip, pretrained, dtype, preprocess = spec.name, spec.pretrained, spec.dtype, spec.preprocess
        device = spec.device if device == "auto" else device
    model = ClipModel(clip, pretrained, device=device, dtype=dtype, precision=precision, preprocess=preprocess)
    embedder = None
    if engine == "ray":
        from cirkit.gallery.ray_embed import RayEmbedder

        args = {"name": clip, "pretrained": pretrained, "dtype": dtype, "precision": precision, "preprocess": preprocess}
        embedder = RayEmbedder(args, device=device,
                               address=ray_address, actors=ray_actors)
        embedder.preflight()
    return build_index(
        images_dir, out, model, batch_size=batch_size, workers=workers, max_pixels=max_pixels, progress=progress,
        embedder=embedder, index_type=index_type, index_params=index_params,
    )


def query(
    image: str | Path,
    text: str,
    index: str | Path,
    *,
    pipeline: str | Path = DEFAULT_PIPELINE,
    prompts: dict[str, str | list[str]] | None = None,
    k: int = 10,
    data_dir: str | Path | None = None,
    models: ModelPool | None = None,
    progress: bool = False,
    use_cache: bool = True,
    model_overrides: dict[str, dict[str, Any]] | None = None,
    exclude_reference: bool | None = False,
) -> dict[str, Any]:
    """Retrieve gallery images showing `image` changed as `text` says.

    Returns the stored run as a dict: its id, inputs, every step's prompts, raw and parsed outputs,
    and `results` cut to the top `k`. `prompts` swaps step templates: {"rewrite": "./mine.yaml"}
    (a list of templates makes an ensemble). `exclude_reference`: see query_many.
    """
    (run,) = query_many(
        [Query(image, text)], index, pipeline=pipeline, prompts=prompts, k=k, data_dir=data_dir,
        models=models, progress=progress, raise_on_failure=True, use_cache=use_cache, model_overrides=model_overrides,
        exclude_reference=exclude_reference,
    )
    return run


def query_many(
    queries: list[Query],
    index: str | Path,
    *,
    pipeline: str | Path = DEFAULT_PIPELINE,
    prompts: dict[str, str | list[str]] | None = None,
    k: int = 10,
    data_dir: str | Path | None = None,
    models: ModelPool | None = None,
    progress: bool = False,
    raise_on_failure: bool = False,
    use_cache: bool = True,
    store: RunStore | None = None,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
    model_overrides: dict[str, dict[str, Any]] | None = None,
    exclude_reference: bool | None = False,
) -> list[dict[str, Any]]:
    """Run many queries together: every step is called once per batch over all of them.

    Returns one stored run dict per query, in order; failed runs have status "failed" and an error.
    `store` is an open run store to write to instead of the one in `data_dir` (the caller closes it).
    `on_event` is told as each run starts and each step is stored (see run_queries).
    `exclude_reference`: True leaves a query's reference image out of its results where the gallery
    holds it (its path, or any image with the same content); None does so only for a reference inside
    the indexed folder (what `cirkit query` does by default). The run's inputs list what was left out
    (`excluded`).
    """
    swaps = {step: [refs] if isinstance(refs, str) else list(refs) for step, refs in (prompts or {}).items()}
    spec = load_pipeline(pipeline, swaps, model_overrides)
    gallery = GalleryIndex.open(index)
    queries = [q if q.exclude is not None else replace(q, exclude=reference_copies(gallery, q.image, exclude_reference))
               for q in queries]
    k_asked = k
    k += max((len(q.exclude or []) for q in queries), default=0)  # still k results once they are left out
    own_store = store is None
    store = RunStore(data_dir) if own_store else store
    try:
        run_ids = run_queries(
            spec, queries, index=gallery, store=store, models=models, k=k, progress=progress,
            raise_on_failure=raise_on_failure, use_cache=use_cache, on_event=on_event,
        )
        runs = [store.get(run_id).to_dict() for run_id in run_ids]
    finally:
        if own_store:
            store.close()
    for run in runs:
        run["results"] = (run["results"] or [])[:k_asked]
    return runs


def reference_copies(gallery: GalleryIndex, image: str | Path, exclude: bool | None = None) -> list[str] | None:
    """The gallery paths that hold the reference image (its own path, or the same content), when it
    is to be left out: always for `exclude` True, never for False, and for None only when the image
    lies inside the indexed folder."""
    if exclude is False:
        return None
    path = Path(image).expanduser()
    try:
        rel = path.resolve().relative_to(gallery.root.resolve()).as_posix()
    except (OSError, ValueError):
        rel = None
    if exclude is None and rel is None:
        return None
    from cirkit.errors import ImageError
    from cirkit.images import image_sha256

    try:
        sha = image_sha256(path)
    except ImageError:  # an unreadable reference is refused by the runner, with its own message
        sha = None
    paths = [e["path"] for e in gallery.manifest["entries"] if e["path"] == rel or (sha is not None and e.get("sha256") == sha)]
    return paths or None


def load_queries(path: str | Path) -> list[Query]:
    """Queries from a JSONL file, one {"image": PATH, "text": MODIFICATION, "id": ..., "targets": [...]} per line
    (id and targets optional; targets are gallery paths relative to the index root).

    Relative image paths are read relative to the file.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CirkitError(f"cannot read queries file {path}: {one_line(exc)}") from None
    queries = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise CirkitError(f"{path} line {number}: not JSON ({one_line(exc)})") from None
        if not isinstance(record, dict) or not isinstance(record.get("image"), str) or not isinstance(record.get("text"), str):
            raise CirkitError(f'{path} line {number}: expected {{"image": PATH, "text": MODIFICATION}}')
        targets = record.get("targets")
        if targets is not None and not (isinstance(targets, list) and all(isinstance(t, str) for t in targets)):
            raise CirkitError(f"{path} line {number}: 'targets' must be a list of gallery paths")
        image = Path(record["image"]).expanduser()
        image = image if image.is_absolute() else path.parent / image
        queries.append(Query(image, record["text"], str(record.get("id", number)), targets))
    if not queries:
        raise CirkitError(f"{path}: no queries")
    return queries
