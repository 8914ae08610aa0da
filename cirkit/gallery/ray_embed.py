"""Embedding a gallery on a Ray cluster: the `ray` engine of `cirkit index`.

`RayEmbedder` has the signature of the local embedding loop (`cirkit.gallery.index._embed`): given the
images to embed, it yields batches of (hashes, vectors, failures), and `build_index` writes them
into the same cache shards and the same index as a local run.

How the result stays identical to a local run:
- the images are cut into blocks of whole batches (one cache shard each, `SHARD_IMAGES` rounded
  to whole batches), in the local order; one block is one row of a Ray dataset;
- a pool of actors, each holding the CLIP model, embeds a block by running the local loop itself
  (`_embed`: same decoding, preprocessing, failure handling and batch composition) over it;
- blocks come back in any order, but each holds whole batches of the local run, and the cache is
  keyed by image content, so the index built from it is the same. An interrupted run keeps every
  block finished before the interruption; what is left still falls into the same batches.

Ray is imported only here, and only when the `ray` engine is chosen.
"""

from __future__ import annotations

import json
import pickle
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cirkit.engines.ray_cluster import PROBE_SECONDS, import_ray, ray_missing_message  # noqa: F401 (used by callers)
from cirkit.engines.ray_cluster import cirkit_message as _cirkit_message
from cirkit.engines.ray_cluster import cluster_gpus_cpus as _cluster_gpus_cpus
from cirkit.engines.ray_cluster import connect as _connect
from cirkit.engines.ray_cluster import first_line as _first_line
from cirkit.engines.ray_cluster import no_restarts as _no_restarts
from cirkit.engines.ray_cluster import probe as _probe
from cirkit.engines.ray_cluster import quiet_worker as _quiet_worker
from cirkit.errors import CirkitError, one_line


class RayEmbedder:
    """Embed with Ray Data over an actor pool that holds the CLIP model (a GPU per actor where there are GPUs).

    `clip_args` are the ClipModel arguments each actor loads the model with (name, pretrained, dtype):
    model files must be at the same paths on every node. `address`: None starts a local Ray instance
    (or uses the one this process already started), "auto" joins the cluster this machine belongs
    to, "ray://HEAD:10001" or "HEAD:6379" a remote one. `actors`: the pool size (default: one per
    GPU, else one per CPU).
    """

    def __init__(self, clip_args: dict[str, Any], *, device: str = "auto", address: str | None = None,
                 actors: int | None = None):
        # model files by absolute path: actors do not run in this process's directory
        self.clip_args = {k: _absolute_if_file(v) for k, v in clip_args.items()}
        self.device = device
        self.address = address
        self.actors = actors

    def preflight(self) -> None:
        """Fail early (before the gallery is hashed) on an address that is malformed or does not answer."""
        if self.address and self.address != "auto":
            _probe(self.address)

    def __call__(self, items: list[tuple[str, Path]], clip: Any, batch_size: int, workers: int | None,
                 max_pixels: int) -> Iterator[tuple[list[str], np.ndarray, list[tuple[str, str]]]]:
        from cirkit.gallery import index as gallery

        ray = import_ray()
        started = _connect(ray, self.address)
        rows = None
        try:
            gpus, cpus = _cluster_gpus_cpus(ray)
            use_gpus = self._use_gpus(gpus)
            actors = self.actors or max(1, int(gpus) if use_gpus else int(cpus))
            block = max(1, gallery.SHARD_IMAGES // batch_size) * batch_size
            clip_args = dict(self.clip_args)
            if getattr(clip, "precision", None) and clip_args.get("dtype", "auto") == "auto":
                # the precision the index records is the one resolved here ("auto" would resolve per worker)
                clip_args["precision"] = clip.precision
            blocks = [
                {"block": i, "items": json.dumps([[sha, str(path)] for sha, path in items[start : start + block]])}
                for i, start in enumerate(range(0, len(items), block))
            ]
            context = ray.data.DataContext.get_current()
            context.enable_progress_bars = False
            context.print_on_execution_start = False
            source = ray.data.from_items(blocks, override_num_blocks=len(blocks))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Ray >= 2.60 deprecates actor options passed as keywords
                dataset = source.map_batches(
                    _BlockEmbedder,
                    batch_size=1,
                    compute=ray.data.ActorPoolStrategy(size=min(actors, len(blocks))),
                    num_cpus=1,
                    num_gpus=1 if use_gpus else 0,
                    # A lost actor ends the run (with one line) instead of being restarted: a re-run continues
                    # from the finished blocks. (Restartable actors also make Ray print a notice on the terminal.)
                    **_no_restarts(source.map_batches),
                    fn_constructor_kwargs={
                        "clip_args": clip_args,
                        "device": "cuda" if use_gpus else "cpu",
                        "identity": clip.identity,
                        "batch_size": batch_size,
                        "workers": workers if workers is not None else _default_workers(use_gpus, gpus, cpus),
                        "max_pixels": max_pixels,
                    },
                )
            rows = _ray_errors(ray, iter(dataset.iter_rows()))
            for row in rows:
                yield from pickle.loads(row["payload"])
        finally:
            if rows is not None:
                rows.close()  # shuts the execution (and its actors) down now when the caller stops early
            if started:
                ray.shutdown()

    def _use_gpus(self, gpus: float) -> bool:
        if self.device == "cpu":
            return False
        if self.device.startswith("cuda") and gpus < 1:
            raise CirkitError(f"--device {self.device}, but the Ray cluster has no GPUs: use --device cpu or auto")
        return gpus >= 1


class _BlockEmbedder:
    """A Ray actor holding the CLIP model; one call embeds one block with the local loop."""

    def __init__(self, clip_args: dict[str, Any], device: str, identity: dict[str, Any], batch_size: int,
                 workers: int | None, max_pixels: int):
        from cirkit.engines.open_clip_engine import ClipModel, clip_identity_text

        _quiet_worker()
        where = f"on Ray node {socket.gethostname()}"
        try:
            self.clip = ClipModel(**clip_args, device=device)
        except CirkitError as exc:
            raise CirkitError(f"{one_line(exc)} ({where}: model files must be at the same paths on every node)") from None
        expected = clip_args.get("precision")
        if expected and getattr(self.clip, "precision", expected) != expected:
            raise CirkitError(f"CLIP {where} runs in {self.clip.precision}, not {expected}: pass --precision")
        if self.clip.identity != identity:
            raise CirkitError(
                f"the CLIP model {where} is {clip_identity_text(self.clip.identity)}, not "
                f"{clip_identity_text(identity)}: model files must be the same on every node"
            )
        self.batch_size, self.workers, self.max_pixels = batch_size, workers, max_pixels

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from cirkit.gallery.index import _embed

        payloads = []
        for text in batch["items"]:
            items = [(sha, Path(path)) for sha, path in json.loads(str(text))]
            batches = list(_embed(items, self.clip, self.batch_size, self.workers, self.max_pixels))
            payloads.append(pickle.dumps(batches, protocol=pickle.HIGHEST_PROTOCOL))
        return {"block": np.asarray(batch["block"]), "payload": np.array(payloads, dtype=object)}


def _ray_errors(ray, rows):
    """The rows; a failure on the cluster as one CirkitError line (a CirkitError raised in an actor as itself)."""
    try:
        yield from rows
    except Exception as exc:
        message = _cirkit_message(exc)
        if message is not None:
            raise CirkitError(message) from None
        if not isinstance(exc, ray.exceptions.RayError):
            raise
        raise CirkitError(
            f"embedding on Ray failed: {_first_line(exc)} (finished blocks are kept: re-run to continue)"
        ) from None


def _absolute_if_file(value: Any) -> Any:
    if isinstance(value, str) and value and Path(value).expanduser().is_file():
        return str(Path(value).expanduser().resolve())
    return value


def _default_workers(use_gpus: bool, gpus: float, cpus: float) -> int:
    """Decoding processes per actor: none for a CPU actor (it holds one CPU, and there is one per CPU);
    for a GPU actor, its share of the CPUs, one left to the actor itself (up to 16, as locally)."""
    if not use_gpus:
        return 0
    return max(1, min(16, int(cpus // max(gpus, 1)) - 1))
