"""`cirkit serve`: a local process that keeps models loaded, so that queries are warm.

A query from the command line that loads a BLIP-2 and an LLM takes minutes; through a server whose
models are already loaded it takes seconds. The server answers one query (or one batch) at a time:
models are shared, so a lock serializes requests. It runs exactly what `cirkit query --local` runs
(`cirkit.api.query_many`) with the client's run store, index, pipeline, prompt swaps and k, all sent
as absolute paths, so the results, the stored runs and the printed output are the same.

It acts only for its owner. At start it writes a random token to a file only its user can read
(cirkit.serve.protocol.token_path); a request without that token gets 401. A request from a web
page (it carries an Origin header) or sent to another host name than the one it listens on (DNS
rebinding) gets 403. /health answers without the token, with nothing but what identifies a cirkit
server. The protocol is described in cirkit/serve/protocol.py.

A client that loses the connection before the final line (the server died) marks the runs it was
told about as failed, so that `cirkit runs list` shows them as such. A server stopped by Ctrl-C
marks the runs of the query in progress failed itself.
"""

from __future__ import annotations

import errno
import hmac
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from cirkit import __version__
from cirkit.engines import ModelPool
from cirkit.errors import CirkitError, one_line
from cirkit.serve.client import health, mark_failed
from cirkit.serve.protocol import (
    DEFAULT_HOST, JSON_TYPE, PORT_ENV, PROTOCOL, PROTOCOL_HEADER, TOKEN_HEADER, QueryRequest, allowed_hosts, default_port,
    parse_request, remove_token, write_token,
)

MAX_REQUEST_BYTES = 64 * 1024 * 1024


class _Stopping(Exception):
    """The server is stopping: the query in progress writes nothing more."""


class WarmPool(ModelPool):
    """Models kept across requests. A local model whose files changed on disk since it was loaded
    is loaded again, so a long-lived server never answers with stale weights."""

    def __init__(self) -> None:
        super().__init__()
        self.loads = 0
        self._fingerprints: dict[str, str] = {}
        self._names: dict[str, str] = {}

    def get(self, spec) -> Any:
        from cirkit.pipelines.fingerprint import model_fingerprint

        key = json.dumps(spec.model_dump(), sort_keys=True)
        fingerprint = model_fingerprint(spec)
        if key in self._models and self._fingerprints.get(key) != fingerprint:
            del self._models[key]
        if key not in self._models:
            model = super().get(spec)
            self.loads += 1
            self._fingerprints[key] = fingerprint
            self._names[key] = str(getattr(spec, "id", None) or getattr(spec, "name", None) or spec.type)
            return model
        return self._models[key]

    def names(self) -> list[str]:
        return [self._names[key] for key in self._models if key in self._names]


class QueryServer:
    """An HTTP server over a WarmPool, answering one query (or batch) at a time."""

    def __init__(self, host: str = DEFAULT_HOST, port: int | None = None, *, log: Callable[[str], None] | None = None):
        self.pool = WarmPool()
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.query_lock = threading.Lock()  # one query at a time: models are shared
        self.write_lock = threading.Lock()  # run store writes vs stopping
        self.stopping = False
        self.ready = False
        self.queries = 0
        self.in_flight: tuple[str, list[str]] | None = None  # (data dir, run ids) of the query in progress
        port = default_port() if port is None else port
        try:
            self.httpd = _HTTPServer((host, port), _Handler)
        except OSError as exc:
            raise CirkitError(_bind_error(host, port, exc)) from None
        except OverflowError:
            raise CirkitError(f"bad port {port}: choose one in 1-65535") from None
        self.httpd.app = self
        self.host, self.port = host, self.httpd.server_address[1]
        self.url = f"http://{host if ':' not in host else f'[{host}]'}:{self.port}"
        self.hosts = allowed_hosts(host, self.port)
        try:
            self.token_file, self.token = write_token(self.port)
        except CirkitError:
            self.httpd.server_close()
            raise
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)

    def preload(self, pipelines: list[str], model_overrides: dict[str, dict[str, Any]] | None = None) -> None:
        """Load every model the pipelines name (with `model_overrides` replacing entries); queries that
        arrive meanwhile wait for it."""
        from cirkit.pipelines import load_pipeline

        with self.query_lock:
            for ref in pipelines:
                start = time.perf_counter()
                pipeline = load_pipeline(ref, model_overrides=model_overrides)
                names = sorted({step.spec.model for step in pipeline.steps if step.spec.model})
                for name in names:
                    try:
                        self.pool.get(pipeline.models[name])
                    except CirkitError as exc:
                        raise CirkitError(f"pipeline {ref}: model '{name}': {one_line(exc)}") from None
                    except Exception as exc:
                        raise CirkitError(f"pipeline {ref}: model '{name}' failed to load: {type(exc).__name__}: {one_line(exc)}") from None
                self.log(f"pipeline {pipeline.name} ({pipeline.source}): {len(names)} model(s) loaded in {time.perf_counter() - start:.1f} s")
            self.ready = True

    def stop(self) -> bool:
        """Stop answering. A query in progress is abandoned and its runs are marked failed; returns
        whether there was one (its thread may still be inside a model call: exit the process next)."""
        with self.write_lock:
            self.stopping = True
            abandoned = self.in_flight
            if abandoned:
                mark_failed(abandoned[0], abandoned[1], "the cirkit server was stopped before this run finished")
        if self.thread.is_alive():
            self.httpd.shutdown()
        self.httpd.server_close()
        remove_token(self.token_file, self.token)
        return abandoned is not None

    def health(self, *, owner: bool) -> dict[str, Any]:
        """What identifies a cirkit server; to its owner (the token), also what it is doing."""
        public = {"service": "cirkit", "protocol": PROTOCOL, "version": __version__, "pid": os.getpid(), "ready": self.ready}
        if not owner:
            return public
        return {**public, "busy": self.in_flight is not None, "queries": self.queries,
                "model_loads": self.pool.loads, "models": self.pool.names()}

    def refusal(self, headers, *, need_token: bool) -> tuple[int, str] | None:
        """Why a request is refused (HTTP status, one line), or None: a web page's request (Origin,
        Sec-Fetch-Site), another host name than this server's (DNS rebinding), a missing or wrong token."""
        if headers.get("Origin") is not None or headers.get("Sec-Fetch-Site") is not None:
            return 403, f"cirkit serve does not answer web pages (Origin: {headers.get('Origin')})"
        if (headers.get("Host") or "").strip().lower() not in self.hosts:
            return 403, (f"cirkit serve answers only requests addressed to {self.host}:{self.port} "
                         f"(or localhost), not to Host '{headers.get('Host') or ''}'")
        token = headers.get(TOKEN_HEADER)
        if token is None:
            return (401, f"no token: send the one in {self.token_file} (readable only by the user who started the server) "
                         f"in the {TOKEN_HEADER} header") if need_token else None
        if not hmac.compare_digest(token.encode("utf-8", "surrogateescape"), self.token.encode("ascii")):
            return 401, (f"wrong token: the server's token is in {self.token_file} (readable only by the user who started "
                         "it); a restarted server has a new one")
        return None

    def run_query(self, request: QueryRequest, emit: Callable[[dict[str, Any]], None]) -> None:
        """One request, under the query lock: exactly what `cirkit query --local` calls, with this
        server's warm models."""
        from cirkit.api import load_queries, query_many
        from cirkit.pipelines.runner import Query
        from cirkit.prompts import use_data_dir

        with self.query_lock:
            if self.stopping:
                emit({"error": "the cirkit server is stopping: run the query again (--local runs it here)"})
                return
            start = time.perf_counter()
            self.in_flight = (request.data_dir, [])
            try:
                if request.queries_file is not None:
                    batch = load_queries(request.queries_file)
                else:
                    batch = [Query(q.image, q.text, q.id, q.targets) for q in request.queries or []]
                use_data_dir(request.data_dir)  # its imported prompt templates
                runs = query_many(
                    batch, request.index, pipeline=_pipeline_ref(request.pipeline), prompts=request.prompts,
                    model_overrides=request.models, k=request.k, exclude_reference=request.exclude_reference,
                    data_dir=request.data_dir, models=self.pool, progress=False, raise_on_failure=request.raise_on_failure,
                    use_cache=request.use_cache, on_event=self._observer(request.data_dir, emit),
                )
                self.queries += len(batch)
                failed = sum(run["status"] != "ok" for run in runs)
                self.log(f"{len(runs)} quer{'y' if len(runs) == 1 else 'ies'} ({request.pipeline}) in "
                         f"{time.perf_counter() - start:.2f} s" + (f", {failed} failed" if failed else ""))
                emit({"runs": runs})
            except _Stopping:
                return
            except CirkitError as exc:
                self.log(f"query refused: {one_line(exc)}")
                emit({"error": one_line(exc)})
            except Exception as exc:  # a bug: one line for the client, as the CLI prints it locally
                self.log(f"internal error: {type(exc).__name__}: {one_line(exc)}")
                emit({"error": f"internal error in the cirkit server: {type(exc).__name__}: {one_line(exc)}"})
            finally:
                self.in_flight = None

    def _observer(self, data_dir: str, emit: Callable[[dict[str, Any]], None]) -> Callable[[str, dict[str, Any]], None]:
        """What the runner tells as it goes: each started run goes to the client at once; once the
        server is stopping, the query stops before it writes anything more."""

        def observe(event: str, data: dict[str, Any]) -> None:
            with self.write_lock:
                if event == "run" and self.in_flight is not None:
                    self.in_flight[1].append(data["run_id"])
                if self.stopping:
                    if event == "run":
                        mark_failed(data_dir, [data["run_id"]], "the cirkit server was stopped before this run finished")
                    raise _Stopping
            if event == "run":
                emit({"run": data["run_id"]})

        return observe

    def serve(self, pipelines: list[str], model_overrides: dict[str, dict[str, Any]] | None = None) -> None:
        """Listen, preload the pipelines' models (`model_overrides` replacing entries, as `--model`
        does), answer until Ctrl-C (or SIGTERM), stop cleanly."""
        from cirkit.pipelines import load_pipeline

        try:
            for ref in pipelines:  # a bad pipeline file is refused before listening
                load_pipeline(ref, model_overrides=model_overrides)
        except BaseException:
            self.httpd.server_close()
            remove_token(self.token_file, self.token)
            raise
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _raise_interrupt) if main else None
        abandoned = False
        try:
            self.thread.start()
            self.log(f"cirkit serve: listening on {self.url} (protocol {PROTOCOL}, pid {os.getpid()}); Ctrl-C stops it")
            self.log(f"queries need the token in {self.token_file} (readable only by you)")
            if self.host not in ("127.0.0.1", "localhost", "::1"):
                self.log(f"warning: listening on {self.host}: the token travels unencrypted (HTTP) to this port")
            self.preload(pipelines, model_overrides)
            self.log("ready: `cirkit query` uses this server (models stay loaded); `cirkit query --local` runs without it")
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            abandoned = self.stop()
            if main:
                signal.signal(signal.SIGTERM, previous)
        self.log("cirkit serve: stopped" + (" (the query in progress was abandoned; its runs are marked failed)" if abandoned else ""))
        if abandoned:  # its thread is inside a model call: leave without waiting for it
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _bind_error(host: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        url = f"http://{host}:{port}"
        try:
            other = health(url, timeout=2.0)
        except CirkitError:
            other = None
        if other is not None:
            return f"a cirkit server (pid {other.pid}) is already running at {url}: use it, or choose another port with --port"
        return f"port {port} on {host} is already in use: choose another with --port (or set ${PORT_ENV})"
    return f"cannot listen on {host}:{port}: {one_line(exc.strerror or exc)}"


def _pipeline_ref(ref: str) -> str:
    """A pipeline file by its absolute path, or a built-in pipeline by name, never a file in this
    server's directory."""
    from cirkit.pipelines.spec import builtin_names, builtin_path

    if os.path.isabs(ref) or builtin_path(ref) is not None:
        return ref
    raise CirkitError(f"pipeline not found: {ref}; built-in pipelines: {', '.join(builtin_names())}")


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    app: QueryServer


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    server_version = f"cirkit/{__version__}"

    def log_message(self, *args) -> None:  # the server logs queries itself
        pass

    def _json(self, status: int, data: dict[str, Any]) -> None:
        body = json.dumps(data, ensure_ascii=False).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass

    def _refused(self, *, need_token: bool) -> bool:
        refusal = self.server.app.refusal(self.headers, need_token=need_token)
        if refusal is not None:
            self.server.app.log(f"refused {self.command} {one_line(self.path)[:200]} (HTTP {refusal[0]}): {one_line(refusal[1])[:300]}")
            self._json(refusal[0], {"error": refusal[1]})
        return refusal is not None

    def do_GET(self) -> None:  # noqa: N802
        if self._refused(need_token=self.path != "/health"):
            return
        if self.path != "/health":
            self._json(404, {"error": f"no such endpoint: GET {self.path}"})
            return
        self._json(200, self.server.app.health(owner=self.headers.get(TOKEN_HEADER) is not None))

    def do_POST(self) -> None:  # noqa: N802
        app = self.server.app
        if self._refused(need_token=True):
            return
        if self.path != "/query":
            self._json(404, {"error": f"no such endpoint: POST {self.path}"})
            return
        if self.headers.get(PROTOCOL_HEADER) != str(PROTOCOL):
            self._json(400, {"error": f"this client speaks cirkit protocol {self.headers.get(PROTOCOL_HEADER)}, the server at "
                                      f"{app.url} ({__version__}) speaks {PROTOCOL}: restart `cirkit serve` "
                                      "from the client's installation, or use --local"})
            return
        if (self.headers.get("Content-Type") or "").split(";")[0].strip().lower() != JSON_TYPE:
            self._json(415, {"error": f"a query must be sent as {JSON_TYPE}"})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= MAX_REQUEST_BYTES:
                raise CirkitError(f"bad request length {length}")
            request = parse_request(self.rfile.read(length))
        except (OSError, ValueError, CirkitError) as exc:
            self._json(400, {"error": f"the cirkit server could not read the query ({one_line(exc)}): use --local"})
            return
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.end_headers()
        except OSError:
            return
        client_gone = False

        def emit(message: dict[str, Any]) -> None:
            nonlocal client_gone
            if client_gone:
                return
            try:
                self.wfile.write(json.dumps(message, ensure_ascii=False).encode("utf-8") + b"\n")
                self.wfile.flush()
            except OSError:  # the client went away (Ctrl-C): the query still finishes and is stored
                client_gone = True

        app.run_query(request, emit)
        self.close_connection = True
