"""Talking to `cirkit serve`: finding a server, sending a query, and what to do when it dies.

Kept light (the standard library and pydantic) so that a query through a warm server does not pay
for importing torch and friends in the client. The protocol is described in cirkit/serve/protocol.py.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cirkit import __version__
from cirkit.errors import CirkitError, one_line
from cirkit.serve.protocol import (
    DEFAULT_HOST, JSON_TYPE, PORT_ENV, PROTOCOL, PROTOCOL_HEADER, SERVER_ENV, TOKEN_HEADER, PathNames, QueryRequest,
    default_port, read_token,
)

CONNECT_TIMEOUT = 0.5  # seconds: nobody listening on localhost is refused at once; this bounds odd networks
HEALTH_TIMEOUT = 10.0  # seconds for a listening server to answer /health (it answers from its own thread)


# ---------------------------------------------------------------- addresses


def server_url(url: str | None = None) -> str:
    """The server a client talks to: `url`, else $CIRKIT_SERVER, else http://127.0.0.1:$CIRKIT_PORT."""
    url = url or os.environ.get(SERVER_ENV, "").strip() or f"http://{DEFAULT_HOST}:{default_port()}"
    _address(url)  # refuse a malformed address early
    return url.rstrip("/")


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "http" or not parts.hostname or port is None or parts.path not in ("", "/"):
        raise CirkitError(f"bad cirkit server address '{url}': expected http://HOST:PORT")
    return parts.hostname, port


def server_token(url: str) -> str:
    """The token of this user's server at `url` (kept per port), or one line saying why there is none."""
    try:
        return read_token(_address(url)[1])
    except CirkitError as exc:
        raise CirkitError(f"a cirkit server answers at {url}, but {exc}: only the user who started it can use it; "
                          "use --local, or another --port") from None


# ---------------------------------------------------------------- talking to a server


@dataclass
class Health:
    """What /health says; busy, queries, model_loads and models only to a request with the token."""

    url: str
    pid: int
    ready: bool
    busy: bool | None = None
    queries: int | None = None
    model_loads: int | None = None
    models: list[str] | None = None


def health(url: str, *, timeout: float = HEALTH_TIMEOUT, token: str | None = None) -> Health | None:
    """The server at `url`, or None when nothing listens there (or it does not answer in time).

    Something that answers, but not as a cirkit server of this protocol version, is a CirkitError.
    """
    host, port = _address(url)
    conn = http.client.HTTPConnection(host, port, timeout=CONNECT_TIMEOUT)
    headers = {"Accept": JSON_TYPE, **({TOKEN_HEADER: token} if token else {})}
    try:
        try:
            conn.connect()
        except OSError:
            return None  # refused, unreachable: no server
        conn.sock.settimeout(timeout)
        try:
            conn.request("GET", "/health", headers=headers)
            response = conn.getresponse()
            body = response.read(1024 * 1024)
        except TimeoutError:
            return None  # a listener that never answers: not a usable server
        except (OSError, http.client.HTTPException) as exc:
            raise CirkitError(f"{url} answered, but not as a cirkit server ({type(exc).__name__}: {one_line(exc)}): "
                              f"stop it, or point --server/${SERVER_ENV} elsewhere, or use --local") from None
    finally:
        conn.close()
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if response.status in (401, 403) and isinstance(data, dict) and isinstance(data.get("error"), str):
        raise CirkitError(f"the cirkit server at {url} refused: {data['error']}")
    if response.status != 200 or not isinstance(data, dict) or data.get("service") != "cirkit":
        raise CirkitError(f"{url} answered, but not as a cirkit server (HTTP {response.status}): "
                          f"point --server/${SERVER_ENV}/${PORT_ENV} elsewhere, or use --local")
    if data.get("protocol") != PROTOCOL:
        raise CirkitError(f"the cirkit server at {url} (version {data.get('version')}) speaks protocol {data.get('protocol')}, "
                          f"this cirkit ({__version__}) speaks {PROTOCOL}: restart `cirkit serve` from this installation, or use --local")
    try:
        state = Health(url, int(data["pid"]), bool(data["ready"]))
        if token:
            state.busy, state.queries, state.model_loads = bool(data["busy"]), int(data["queries"]), int(data["model_loads"])
            state.models = [str(m) for m in data["models"]]
        return state
    except (KeyError, TypeError, ValueError):
        raise CirkitError(f"the cirkit server at {url} sent a malformed health answer: use --local") from None


def find_server(url: str | None = None) -> str | None:
    """The URL of a cirkit server to use, or None to run locally.

    An explicit `url` (the --server flag) must answer; the default address ($CIRKIT_SERVER, else
    127.0.0.1:$CIRKIT_PORT) is used only when a server answers there.
    """
    target = server_url(url)
    if health(target) is not None:
        return target
    if url:
        raise CirkitError(f"no cirkit server answers at {target}: start one with `cirkit serve`, or leave out --server")
    return None


def remote_query(url: str, request: QueryRequest, names: PathNames | None = None) -> list[dict[str, Any]]:
    """Send one query request, with this user's token for the server; returns the stored runs as
    `query_many` returns them. Paths in error messages are named as `names` says the user typed them.

    If the server goes away before answering, the runs it had started are marked failed in the
    request's run store, and a CirkitError says so.
    """
    local = names.local if names is not None else (lambda message: message)
    host, port = _address(url)
    token = server_token(url)
    body = request.model_dump_json(exclude_none=True).encode("utf-8")
    headers = {"Content-Type": JSON_TYPE, TOKEN_HEADER: token, PROTOCOL_HEADER: str(PROTOCOL)}
    conn = http.client.HTTPConnection(host, port, timeout=CONNECT_TIMEOUT)
    started: list[str] = []
    try:
        try:
            conn.connect()
        except OSError as exc:
            raise CirkitError(f"the cirkit server at {url} stopped answering ({one_line(exc)}): run the query again") from None
        conn.sock.settimeout(None)  # a query takes as long as the models take
        try:
            conn.request("POST", "/query", body=body, headers=headers)
            response = conn.getresponse()
            if response.status != 200:
                raise CirkitError(local(_error_answer(url, response)))
            for line in response:
                message = _message(url, line)
                if "run" in message:
                    started.append(str(message["run"]))
                elif "runs" in message and isinstance(message["runs"], list):
                    return message["runs"]
                elif "error" in message:
                    raise CirkitError(local(str(message["error"])))
                else:
                    raise CirkitError(f"the cirkit server at {url} sent a message this client does not know: use --local")
            reason = "the connection closed before the answer"
        except (OSError, http.client.HTTPException) as exc:
            reason = f"{type(exc).__name__}: {one_line(exc)}" if str(exc) else type(exc).__name__
    finally:
        conn.close()
    failed = mark_failed(request.data_dir, started, f"the cirkit server at {url} stopped before this run finished")
    what = f"; its unfinished run{'s' if len(failed) > 1 else ''} {', '.join(failed)} marked failed" if failed else ""
    raise CirkitError(f"the cirkit server at {url} stopped mid-query ({reason}){what}; run the query again (--local runs it here)")


def _message(url: str, line: bytes) -> dict[str, Any]:
    try:
        message = json.loads(line)
    except ValueError:
        message = None
    if not isinstance(message, dict):
        raise CirkitError(f"the cirkit server at {url} answered something that is not cirkit's protocol: use --local")
    return message


def _error_answer(url: str, response: http.client.HTTPResponse) -> str:
    try:
        data = json.loads(response.read(1024 * 1024))
        message = data.get("error") if isinstance(data, dict) else None
    except (OSError, ValueError, http.client.HTTPException):
        message = None
    if not isinstance(message, str):
        return f"the cirkit server at {url} refused the query (HTTP {response.status}): use --local"
    if response.status in (401, 403):
        return f"the cirkit server at {url} refused the query: {message}"
    return message


def mark_failed(data_dir: str | None, run_ids: list[str], error: str) -> list[str]:
    """Mark the runs a stopped server left 'running' as failed, with `error`; returns the ids of
    those that are failed now (marked here, or already by the server as it stopped)."""
    if not run_ids:
        return []
    from cirkit.store import RunStore

    failed = []
    try:
        store = RunStore(data_dir)
    except CirkitError:
        return []
    try:
        for run_id in run_ids:
            try:
                status = store.get(run_id).status
                if status == "running":
                    store.finish_run(run_id, results=None, error=error)
                    status = "failed"
            except CirkitError:
                continue
            if status == "failed":
                failed.append(run_id)
    finally:
        store.close()
    return failed


def wait_until_ready(url: str, *, timeout: float, poll: float = 0.1) -> Health:
    """Block until the server at `url` has preloaded its models (for scripts and tests)."""
    deadline = time.monotonic() + timeout
    while True:
        state = None
        try:
            state = health(url)
        except CirkitError:
            pass
        if state is not None and state.ready:
            return state
        if time.monotonic() > deadline:
            raise CirkitError(f"no ready cirkit server at {url} after {timeout:.0f} s")
        time.sleep(poll)


def free_port(host: str = DEFAULT_HOST) -> int:
    """A port nothing listens on right now (for scripts and tests)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
