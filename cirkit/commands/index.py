"""`cirkit index`: embed a folder of images into a gallery index."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from cirkit.commands.common import ModelOverrides
from cirkit.console import stderr, stdout
from cirkit.errors import CirkitError


def index(
    images_dir: Annotated[Path, typer.Argument(help="Folder of gallery images (searched recursively).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Index directory to create or update.")],
    pipeline: Annotated[Optional[str], typer.Option(help="Use this pipeline's CLIP model (default: cirevl).")] = None,
    clip: Annotated[Optional[str], typer.Option(help="open_clip model name, or a model config JSON path.")] = None,
    pretrained: Annotated[Optional[str], typer.Option(help="open_clip pretrained tag, or a checkpoint path.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(min=1, help="Images per forward pass (default: 64 on CPU, 256 on GPU).")] = None,
    workers: Annotated[Optional[int], typer.Option(min=0, help="Image decoding processes (default: 1 on CPU, up to 16 on GPU).")] = None,
    precision: Annotated[str, typer.Option(help="auto (fp32 on CPU, bf16 on GPU), fp32, bf16 or fp16 (autocast).")] = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, ...")] = "auto",
    max_pixels: Annotated[Optional[int], typer.Option(min=1, help="Skip images with more pixels than this.")] = None,
    index_type: Annotated[Optional[str], typer.Option(help="auto (flat below 1M images, else ivfpq), flat, hnsw or ivfpq (default: as the index was built, else auto).")] = None,
    captions: Annotated[Optional[str], typer.Option(help="Also caption the gallery with this pipeline's caption step (for `gallery_captions` scoring).")] = None,
    engine: Annotated[str, typer.Option(help="local, or ray: embed on a Ray cluster (pip install 'cirkit[ray]').")] = "local",
    ray_address: Annotated[Optional[str], typer.Option(help="Ray cluster: auto, ray://HEAD:10001 or HEAD:6379 (default: a local Ray instance).")] = None,
    ray_actors: Annotated[Optional[int], typer.Option(min=1, help="Ray actors holding the model (default: one per GPU, else one per CPU).")] = None,
    model: ModelOverrides = None,
) -> None:
    """Embed a folder of images with CLIP into a FAISS index (resumable; updates add and drop images)."""
    from cirkit.api import index_folder
    from cirkit.images import DEFAULT_MAX_PIXELS
    from cirkit.commands.common import parse_model_overrides

    if pretrained and not clip:
        raise CirkitError("--pretrained goes with --clip")
    overrides = parse_model_overrides(model)
    if overrides and clip:
        raise CirkitError("--model replaces a model of --pipeline; with --clip no pipeline is used")
    report = index_folder(
        images_dir,
        out,
        pipeline=pipeline,
        clip=clip,
        pretrained=pretrained,
        device=device,
        batch_size=batch_size,
        workers=workers,
        max_pixels=max_pixels or DEFAULT_MAX_PIXELS,
        progress=True,
        precision=precision,
        index_type=index_type,
        engine=engine,
        ray_address=ray_address,
        ray_actors=ray_actors,
        model_overrides=overrides,
    )
    stdout.print(
        f"indexed {report.count} images into {report.directory} "
        f"({report.embedded} embedded, {report.reused} reused, {report.removed} removed, {len(report.skipped)} skipped)"
    )
    from cirkit.gallery.ann import describe

    stdout.print(f"index: {describe(report.index)}{'' if report.index_built else ' (unchanged, kept)'}")
    if report.skipped:
        table = Table("skipped file", "reason", title="Skipped images (also listed in manifest.json)")
        for item in report.skipped:
            table.add_row(escape(item["path"]), escape(item["reason"]))
        stderr.print(table)
    if captions:
        from cirkit.engines import ModelPool
        from cirkit.pipelines.gallery_captions import caption_gallery
        from cirkit.pipelines import load_pipeline

        done = caption_gallery(out, load_pipeline(captions, model_overrides=overrides), ModelPool(), progress=True)
        stdout.print(f"captioned {done.captioned} gallery images ({done.reused} reused, {len(done.failed)} failed)")
        for item in done.failed:
            stderr.print(f"[yellow]not captioned[/yellow] {escape(item['path'])}: {escape(item['reason'])}")
