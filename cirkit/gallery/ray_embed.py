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

import inspect
import json
import logging
import pickle
import re
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from cirkit.errors import CirkitError, one_line

PROBE_SECONDS = 5.0  # how long a cluster address may take to accept a connection and answer


def ray_missing_message() -> str:
    return "--engine ray needs Ray: pip install 'cirkit[ray]' (on every node of the cluster)"


def import_ray():
    try:
        import ray
        import ray.data
    except ImportError:
        raise CirkitError(ray_missing_message()) from None
    return ray


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


def _connect(ray, address: str | None) -> bool:
    """Connect this process to Ray; whether it started (and so must stop) a local instance."""
    if ray.is_initialized():
        if address:
            raise CirkitError(
                f"Ray is already initialized in this process: leave out the Ray address ({address}) to use it"
            )
        return False
    _quiet_driver()
    if address and address != "auto":
        _probe(address)
    try:
        if address and address.startswith("ray://"):
            ray.init(address=address)
        else:
            ray.init(address=address or None, include_dashboard=False if not address else None,
                     log_to_driver=False, logging_level=logging.ERROR)
    except (ConnectionError, TimeoutError, RuntimeError, ValueError, OSError) as exc:
        if address == "auto":
            raise CirkitError(
                "--ray-address auto found no running Ray cluster on this machine: start one with `ray start --head`"
            ) from None
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise CirkitError(f"cannot connect to {where}: {one_line(exc)}") from None
    return True


def _probe(address: str) -> None:
    """Fail fast, in one line, when a cluster address does not answer.

    Both Ray's GCS (HOST:6379) and its client server (ray://HOST:10001) speak gRPC: given an HTTP/2
    preface they answer at once. A host that refuses, or accepts and stays silent, is reported here
    instead of leaving ray.init to wait for minutes.
    """
    parts = urlsplit(address if "://" in address else f"//{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or not port or parts.scheme not in ("", "ray"):
        raise CirkitError(f"--ray-address {address}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection((host, port), timeout=PROBE_SECONDS) as sock:
            sock.sendall(_HTTP2_PREFACE)
            try:
                sock.recv(1)  # bytes, or the connection closed (e.g. a TLS server): something answered
            except ConnectionError:
                pass
    except OSError as exc:
        reason = f"silent for {PROBE_SECONDS:g} s" if isinstance(exc, TimeoutError) else one_line(exc.strerror or exc)
        raise CirkitError(
            f"the Ray cluster at {address} does not answer ({reason}): check the address and that "
            "`ray start --head` runs there"
        ) from None


_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + empty SETTINGS


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


_REMOTE_CIRKIT_ERROR = re.compile(r"cirkit\.errors\.\w+: (.+)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _cirkit_message(exc: BaseException) -> str | None:
    """The message of a CirkitError raised on the cluster: in the exception chain, or (when Ray passes
    only the remote traceback's text, as for an actor that failed to start) at the end of that text."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, CirkitError):
            return one_line(exc)
        found = _REMOTE_CIRKIT_ERROR.findall(_ANSI.sub("", str(exc)))
        if found:
            return one_line(found[-1])
        cause = getattr(exc, "cause", None)
        exc = cause if isinstance(cause, BaseException) else (exc.__cause__ or exc.__context__)
    return None


def _first_line(exc: BaseException) -> str:
    lines = [line for line in _ANSI.sub("", str(exc)).splitlines() if line.strip()]
    return one_line(lines[0] if lines else type(exc).__name__)


def _no_restarts(map_batches) -> dict[str, Any]:
    """max_restarts=0 where this Ray version takes actor options as keywords of map_batches."""
    takes_keywords = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(map_batches).parameters.values())
    return {"max_restarts": 0} if takes_keywords else {}


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


def _cluster_gpus_cpus(ray) -> tuple[float, float]:
    resources = ray.cluster_resources()
    return float(resources.get("GPU", 0)), float(resources.get("CPU", 1))


def _quiet_driver() -> None:
    for name in ("ray", "ray.data", "ray.util.client", "ray._private"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _quiet_worker() -> None:
    import os
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
