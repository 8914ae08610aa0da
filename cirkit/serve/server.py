"""`cirkit serve`: a local process that keeps models loaded, so that queries are warm.

A query from the command line that loads a BLIP-2 and an LLM takes minutes; through a server whose
models are already loaded it takes seconds. The server answers one query (or one batch) at a time:
models are shared, so a lock serializes requests. It runs exactly what `cirkit query --local` runs
(`cirkit.api.query_many`) in the client's working directory, with the client's run store, index,
pipeline, prompt swaps and k, so the results, the stored runs and the printed output are the same.

Protocol (version cirkit.serve.client.PROTOCOL), JSON over HTTP/1.0, on 127.0.0.1 by default:

    GET  /health  -> {"service": "cirkit", "protocol": 1, "version", "pid", "ready", "busy",
                      "queries", "model_loads", "models"}
    POST /query   <- {"protocol": 1, "cwd", "data_dir", "index", "pipeline", "prompts", "k",
                      "use_cache", "raise_on_failure", and "queries": [{"image", "text", "id"?,
                      "targets"?}] or "queries_file": PATH}
                  -> newline-delimited JSON, streamed: {"run": ID} as each run is started, then
                     one final {"runs": [...]} (as query_many returns them) or {"error": "one line"}

A client that loses the connection before the final line (the server died) marks the runs it was
told about as failed, so that `cirkit runs list` shows them as such. A server stopped by Ctrl-C
marks the runs of the query in progress failed itself.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from cirkit import __version__
from cirkit.serve.client import DEFAULT_HOST, PORT_ENV, PROTOCOL, default_port, health, mark_failed
from cirkit.engines import ModelPool
from cirkit.errors import CirkitError, one_line
from cirkit.store import RunStore

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
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)

    def preload(self, pipelines: list[str]) -> None:
        """Load every model the pipelines name; queries that arrive meanwhile wait for it."""
        from cirkit.pipelines import load_pipeline

        with self.query_lock:
            for ref in pipelines:
                start = time.perf_counter()
                pipeline = load_pipeline(ref)
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
        return abandoned is not None

    def health(self) -> dict[str, Any]:
        return {
            "service": "cirkit", "protocol": PROTOCOL, "version": __version__, "pid": os.getpid(),
            "ready": self.ready, "busy": self.in_flight is not None, "queries": self.queries,
            "model_loads": self.pool.loads, "models": self.pool.names(),
        }

    def run_query(self, request: dict[str, Any], emit: Callable[[dict[str, Any]], None]) -> None:
        """One request, under the query lock, in the client's working directory: exactly what
        `cirkit query --local` calls, with this server's warm models."""
        from cirkit.api import load_queries, query_many
        from cirkit.pipelines.runner import Query

        with self.query_lock:
            if self.stopping:
                emit({"error": "the cirkit server is stopping: run the query again (--local runs it here)"})
                return
            start = time.perf_counter()
            home = os.getcwd()
            try:
                os.chdir(request["cwd"])
            except (OSError, TypeError, KeyError) as exc:
                emit({"error": f"the cirkit server cannot work in the client's directory {request.get('cwd')} "
                               f"({one_line(exc)}): use --local"})
                return
            self.in_flight = (request.get("data_dir"), [])
            store = None
            try:
                if request.get("queries_file") is not None:
                    batch = load_queries(request["queries_file"])
                else:
                    batch = [Query(q["image"], q["text"], q.get("id"), q.get("targets")) for q in request["queries"]]
                store = _ReportingStore(request.get("data_dir"), self, emit)
                runs = query_many(
                    batch, request["index"], pipeline=request["pipeline"], prompts=request.get("prompts") or {},
                    k=int(request["k"]), models=self.pool, progress=False,
                    raise_on_failure=bool(request.get("raise_on_failure")), use_cache=bool(request.get("use_cache", True)),
                    store=store,
                )
                self.queries += len(batch)
                failed = sum(run["status"] != "ok" for run in runs)
                self.log(f"{len(runs)} quer{'y' if len(runs) == 1 else 'ies'} ({request['pipeline']}) in "
                         f"{time.perf_counter() - start:.2f} s" + (f", {failed} failed" if failed else ""))
                emit({"runs": runs})
            except _Stopping:
                return
            except CirkitError as exc:
                self.log(f"query refused: {one_line(exc)}")
                emit({"error": one_line(exc)})
            except (KeyError, TypeError, ValueError) as exc:
                emit({"error": f"the cirkit server got a malformed query ({type(exc).__name__}: {one_line(exc)}): use --local"})
            except Exception as exc:  # a bug: one line for the client, as the CLI prints it locally
                self.log(f"internal error: {type(exc).__name__}: {one_line(exc)}")
                emit({"error": f"internal error in the cirkit server: {type(exc).__name__}: {one_line(exc)}"})
            finally:
                if store is not None:
                    store.close()
                self.in_flight = None
                os.chdir(home)

    def serve(self, pipelines: list[str]) -> None:
        """Listen, preload the pipelines' models, answer until Ctrl-C (or SIGTERM), stop cleanly."""
        from cirkit.pipelines import load_pipeline

        try:
            for ref in pipelines:  # a bad pipeline file is refused before listening
                load_pipeline(ref)
        except BaseException:
            self.httpd.server_close()
            raise
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _raise_interrupt) if main else None
        abandoned = False
        try:
            self.thread.start()
            self.log(f"cirkit serve: listening on {self.url} (protocol {PROTOCOL}, pid {os.getpid()}); Ctrl-C stops it")
            if self.host not in ("127.0.0.1", "localhost", "::1"):
                self.log(f"warning: listening on {self.host}: whoever reaches this port can run queries and read "
                         "the files this process can read")
            self.preload(pipelines)
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


class _ReportingStore(RunStore):
    """The client's run store, written by the runner as usual, except that each started run is
    announced to the client at once, and nothing is written once the server is stopping."""

    def __init__(self, data_dir, server: QueryServer, emit: Callable[[dict[str, Any]], None]):
        super().__init__(data_dir)
        self.server, self.emit = server, emit

    def _check(self) -> None:
        if self.server.stopping:
            raise _Stopping

    def start_run(self, **kwargs) -> str:
        with self.server.write_lock:
            self._check()
            run_id = super().start_run(**kwargs)
            if self.server.in_flight is not None:
                self.server.in_flight[1].append(run_id)
        self.emit({"run": run_id})
        return run_id

    def add_step(self, run_id, step) -> None:
        with self.server.write_lock:
            self._check()
            super().add_step(run_id, step)

    def cache_put(self, key, step) -> None:
        with self.server.write_lock:
            self._check()
            super().cache_put(key, step)

    def finish_run(self, run_id, *, results, error) -> None:
        with self.server.write_lock:
            self._check()
            super().finish_run(run_id, results=results, error=error)


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

    def do_GET(self) -> None:  # noqa: N802
        if self.path != "/health":
            self._json(404, {"error": f"no such endpoint: GET {self.path}"})
            return
        self._json(200, self.server.app.health())

    def do_POST(self) -> None:  # noqa: N802
        if self.path != "/query":
            self._json(404, {"error": f"no such endpoint: POST {self.path}"})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= MAX_REQUEST_BYTES:
                raise ValueError(f"bad request length {length}")
            request = json.loads(self.rfile.read(length))
            if not isinstance(request, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            self._json(400, {"error": f"the cirkit server could not read the query ({one_line(exc)}): use --local"})
            return
        if request.get("protocol") != PROTOCOL:
            self._json(400, {"error": f"this client speaks cirkit protocol {request.get('protocol')}, the server at "
                                      f"{self.server.app.url} ({__version__}) speaks {PROTOCOL}: restart `cirkit serve` "
                                      "from the client's installation, or use --local"})
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

        self.server.app.run_query(request, emit)
        self.close_connection = True
