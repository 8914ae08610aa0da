"""The Python API: the functions behind the commands, with the same arguments."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cirkit.engines import ModelPool
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
    batch_size: int = 64,
    workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = False,
) -> BuildReport:
    """Embed every image under `images_dir` with CLIP and write a gallery index to `out`.

    The CLIP model is `clip` (+ `pretrained`) when given, else the one of `pipeline`
    (default: the built-in `cirevl` pipeline).
    """
    from cirkit.clip import ClipModel

    dtype = "auto"
    if not clip:
        spec = load_pipeline(pipeline or DEFAULT_PIPELINE).clip_model()
        clip, pretrained, dtype = spec.name, spec.pretrained, spec.dtype
        device = spec.device if device == "auto" else device
    model = ClipModel(clip, pretrained, device=device, dtype=dtype)
    return build_index(
        images_dir, out, model, batch_size=batch_size, workers=workers, max_pixels=max_pixels, progress=progress
    )


def query(
    image: str | Path,
    text: str,
    index: str | Path,
    *,
    pipeline: str | Path = DEFAULT_PIPELINE,
    prompts: dict[str, str] | None = None,
    k: int = 10,
    data_dir: str | Path | None = None,
    models: ModelPool | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Retrieve gallery images showing `image` changed as `text` says.

    Returns the stored run as a dict: its id, inputs, every step's prompts, raw and parsed outputs,
    and `results` cut to the top `k`. `prompts` swaps step templates: {"rewrite": "./mine.yaml"}.
    """
    spec = load_pipeline(pipeline, prompts)
    gallery = GalleryIndex.open(index)
    store = RunStore(data_dir)
    try:
        (run_id,) = run_queries(
            spec, [Query(image, text)], index=gallery, store=store, models=models, k=k, progress=progress
        )
        run = store.get(run_id).to_dict()
    finally:
        store.close()
    run["results"] = (run["results"] or [])[:k]
    return run
