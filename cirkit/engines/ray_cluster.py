"""Reaching a Ray cluster: connect (or start a local instance), fail fast on an address that does not
answer, and turn failures on the cluster into one line. Shared by embedding on Ray
(`cirkit.gallery.ray_embed`) and generation on Ray (`cirkit.engines.ray_engine`).

Ray is imported only when one of them runs.
"""

from __future__ import annotations

import inspect
import logging
import re
import socket
from typing import Any
from urllib.parse import urlsplit

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


def connect(ray, address: str | None, flag: str = "--ray-address") -> bool:
    """Connect this process to Ray; whether it started (and so must stop) a local instance.

    `flag` names where the address came from, for the error lines.
    """
    if ray.is_initialized():
        if address:
            raise CirkitError(
                f"Ray is already initialized in this process: leave out the Ray address ({address}) to use it"
            )
        return False
    quiet_driver()
    if address and address != "auto":
        probe(address, flag)
    try:
        if address and address.startswith("ray://"):
            ray.init(address=address)
        else:
            ray.init(address=address or None, include_dashboard=False if not address else None,
                     log_to_driver=False, logging_level=logging.ERROR)
    except (ConnectionError, TimeoutError, RuntimeError, ValueError, OSError) as exc:
        if address == "auto":
            raise CirkitError(
                f"{flag} auto found no running Ray cluster on this machine: start one with `ray start --head`"
            ) from None
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise CirkitError(f"cannot connect to {where}: {one_line(exc)}") from None
    return True


def check_address(address: str, flag: str = "--ray-address") -> tuple[str, int]:
    """(host, port) of a cluster address HOST:PORT or ray://HOST:PORT; a CirkitError for anything else."""
    parts = urlsplit(address if "://" in address else f"//{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or not port or parts.scheme not in ("", "ray"):
        raise CirkitError(f"{flag} {address}: expected auto, HOST:PORT or ray://HOST:PORT")
    return host, port


def probe(address: str, flag: str = "--ray-address") -> None:
    """Fail fast, in one line, when a cluster address does not answer.

    Both Ray's GCS (HOST:6379) and its client server (ray://HOST:10001) speak gRPC: given an HTTP/2
    preface they answer at once. A host that refuses, or accepts and stays silent, is reported here
    instead of leaving ray.init to wait for minutes.
    """
    host, port = check_address(address, flag)
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
_REMOTE_CIRKIT_ERROR = re.compile(r"cirkit\.errors\.\w+: (.+)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def cirkit_message(exc: BaseException) -> str | None:
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


def first_line(exc: BaseException) -> str:
    lines = [line for line in _ANSI.sub("", str(exc)).splitlines() if line.strip()]
    return one_line(lines[0] if lines else type(exc).__name__)


def no_restarts(map_batches) -> dict[str, Any]:
    """max_restarts=0 where this Ray version takes actor options as keywords of map_batches."""
    takes_keywords = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(map_batches).parameters.values())
    return {"max_restarts": 0} if takes_keywords else {}


def cluster_gpus_cpus(ray) -> tuple[float, float]:
    resources = ray.cluster_resources()
    return float(resources.get("GPU", 0)), float(resources.get("CPU", 1))


def quiet_driver() -> None:
    for name in ("ray", "ray.data", "ray.util.client", "ray._private"):
        logging.getLogger(name).setLevel(logging.ERROR)


def quiet_worker() -> None:
    import os
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
