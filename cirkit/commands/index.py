"""`cirkit index`: embed a folder of images into a gallery index."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from cirkit.console import stderr, stdout
from cirkit.errors import CirkitError


def index(
    images_dir: Annotated[Path, typer.Argument(help="Folder of gallery images (searched recursively).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Index directory to create or update.")],
    pipeline: Annotated[Optional[str], typer.Option(help="Use this pipeline's CLIP model (default: cirevl).")] = None,
    clip: Annotated[Optional[str], typer.Option(help="open_clip model name, or a model config JSON path.")] = None,
    pretrained: Annotated[Optional[str], typer.Option(help="open_clip pretrained tag, or a checkpoint path.")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    workers: Annotated[Optional[int], typer.Option(min=0, help="Image decoding processes (default: up to 4).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, ...")] = "auto",
    max_pixels: Annotated[Optional[int], typer.Option(min=1, help="Skip images with more pixels than this.")] = None,
) -> None:
    """Embed a folder of images with CLIP into a FAISS index (resumable; updates add and drop images)."""
    from cirkit.api import index_folder
    from cirkit.images import DEFAULT_MAX_PIXELS

    if pretrained and not clip:
        raise CirkitError("--pretrained goes with --clip")
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
    )
    stdout.print(
        f"indexed {report.count} images into {report.directory} "
        f"({report.embedded} embedded, {report.reused} reused, {report.removed} removed, {len(report.skipped)} skipped)"
    )
    if report.skipped:
        table = Table("skipped file", "reason", title="Skipped images (also listed in manifest.json)")
        for item in report.skipped:
            table.add_row(escape(item["path"]), escape(item["reason"]))
        stderr.print(table)
