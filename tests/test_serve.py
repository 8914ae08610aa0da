"""`cirkit serve`: a real server process on a free port, queried through the real CLI.

The server keeps the tiny models loaded; a query through it gives the same result, output and
stored run as `cirkit query --local`. Bad ports, dying servers and strangers on the port give one line.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cirkit.serve.client import free_port, health, wait_until_ready
from conftest import write_pipeline

REPO = Path(__file__).resolve().parents[1]
READY_GUARD = 300  # seconds: a hang guard for model loading on a loaded machine, not a speed check


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "NO_PROXY": "127.0.0.1,localhost",
           "no_proxy": "127.0.0.1,localhost", "COLUMNS": "200"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.pop("CIRKIT_SERVER", None)
    env.update(extra)
    return env


class Server:
    """`cirkit serve` as a subprocess; its stderr goes to a file."""

    def __init__(self, tmp: Path, *args: str, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"serve-{self.port}.err"
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cirkit", "serve", "--port", str(self.port), *args],
                stdout=subprocess.DEVNULL, stderr=err, env=_env(), cwd=tmp,
            )

    def ready(self):
        try:
            return wait_until_ready(self.url, timeout=READY_GUARD)
        except Exception:
            self.stop(signal.SIGKILL)
            raise AssertionError(f"cirkit serve did not get ready: {self.stderr}") from None

    @property
    def stderr(self) -> str:
        return self.log.read_text()

    def stop(self, sig=signal.SIGINT) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=READY_GUARD)


@pytest.fixture(scope="module")
def server(tiny_pipeline, tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("serve"), "--pipeline", str(tiny_pipeline))
    srv.ready()
    yield srv
    srv.stop()


@pytest.fixture
def use_server(monkeypatch, server):
    """The CLI in this test finds the module's server at its default address (127.0.0.1:$CIRKIT_PORT)."""
    monkeypatch.delenv("CIRKIT_SERVER", raising=False)
    monkeypatch.setenv("CIRKIT_PORT", str(server.port))
    return server


def _same_run(a: dict, b: dict) -> dict:
    """A run as `--json` prints it, without what differs between two executions (id, time, seconds)."""
    def strip(run):
        run = json.loads(json.dumps(run))
        run.pop("id"), run.pop("created_at")
        for step in run["steps"]:
            step.pop("seconds")
        return run

    a, b = strip(a), strip(b)
    for x, y in zip(a.pop("results"), b.pop("results")):
        assert x["path"] == y["path"] and x["rank"] == y["rank"] and x["file"] == y["file"]
        assert x["score"] == pytest.approx(y["score"], abs=1e-5)
    assert a == b
    return a


def test_query_through_the_server_equals_a_local_query(cli, use_server, tmp_path, gallery, gallery_index, tiny_pipeline, engine_calls_counter):
    server = use_server
    before = health(server.url)
    assert before.ready and before.model_loads == 3  # captioner, LLM, CLIP loaded at start

    args = ["query", "-i", gallery_index, "--image", gallery / "img0004.jpg", "-t", "make it red", "-p", tiny_pipeline, "-k", "5"]
    served = cli(*args, "--json")
    assert served.exit_code == 0, served.stderr
    assert engine_calls_counter == []  # nothing ran in this process: the server's models answered
    after = health(server.url)
    assert after.queries == before.queries + 1
    assert after.model_loads == before.model_loads  # warm: no model loaded again
    run = json.loads(served.stdout)
    assert run["status"] == "ok" and len(run["results"]) == 5

    # the server wrote the run into this client's run store
    listed = json.loads(cli("runs", "list", "--json").stdout)
    assert [r["id"] for r in listed] == [run["id"]]
    stored = json.loads(cli("runs", "show", run["id"], "--json").stdout)
    assert [s["origin"] for s in stored["steps"]] == ["ran"] * 4

    local = cli("--data-dir", tmp_path / "local", *args, "--json", "--local")
    assert local.exit_code == 0, local.stderr
    assert engine_calls_counter  # --local ran the models here
    same = _same_run(run, json.loads(local.stdout))
    assert same["steps"][0]["outputs"]["caption"]

    # the table output is the same too (but for the run id)
    served_table = cli(*args)
    local_table = cli("--data-dir", tmp_path / "local", *args, "--local")
    assert served_table.exit_code == local_table.exit_code == 0
    served_id = json.loads(cli("runs", "list", "--json").stdout)[0]["id"]
    local_id = json.loads(cli("--data-dir", tmp_path / "local", "runs", "list", "--json").stdout)[0]["id"]
    assert served_table.stdout.replace(served_id, "ID") == local_table.stdout.replace(local_id, "ID")
    assert "caption (caption):" in served_table.stdout


def test_queries_file_through_the_server(cli, use_server, tmp_path, gallery, gallery_index, tiny_pipeline):
    queries = tmp_path / "q.jsonl"
    lines = [
        {"image": str(gallery / "img0001.jpg"), "text": "make it red", "id": "a"},
        {"image": str(gallery / "img0002.jpg"), "text": "a blue one", "id": "b", "targets": ["img0005.jpg"]},
    ]
    queries.write_text("".join(json.dumps(line) + "\n" for line in lines))
    before = health(use_server.url).queries
    served = cli("query", "-i", gallery_index, "--queries", queries, "-p", tiny_pipeline, "-k", "3", "--json")
    assert served.exit_code == 0, served.stderr
    assert health(use_server.url).queries == before + 2
    local = cli("--data-dir", tmp_path / "local", "query", "-i", gallery_index, "--queries", queries, "-p", tiny_pipeline, "-k", "3", "--json", "--local")
    assert local.exit_code == 0, local.stderr
    served_runs = [json.loads(line) for line in served.stdout.splitlines()]
    local_runs = [json.loads(line) for line in local.stdout.splitlines()]
    assert [r["inputs"]["query_id"] for r in served_runs] == ["a", "b"]
    for a, b in zip(served_runs, local_runs):
        _same_run(a, b)


@pytest.mark.parametrize("case", ["missing_image", "corrupt_image", "empty_text", "bad_pipeline", "missing_index", "bad_queries_file"])
def test_user_errors_come_back_as_the_same_line(cli, use_server, tmp_path, gallery, gallery_index, tiny_pipeline, case):
    image, text, pipeline, index = gallery / "img0001.jpg", "make it red", tiny_pipeline, gallery_index
    extra: list = []
    if case == "missing_image":
        image = Path("nope.jpg")  # relative: the message names it as given, from the client's directory
    elif case == "corrupt_image":
        image = tmp_path / "corrupt.jpg"
        image.write_bytes((gallery / "img0001.jpg").read_bytes()[:150])
    elif case == "empty_text":
        text = "  "
    elif case == "bad_pipeline":
        pipeline = tmp_path / "bad.yaml"
        pipeline.write_text("name: x\nsteps: [unclosed\n")
    elif case == "missing_index":
        index = tmp_path / "no-index"
    if case == "bad_queries_file":
        bad = tmp_path / "q.jsonl"
        bad.write_text('{"image": "a.jpg", "text": "x"}\nnot json\n')
        args = ["query", "-i", index, "--queries", bad, "-p", pipeline]
    else:
        args = ["query", "-i", index, "--image", image, "-t", text, "-p", pipeline, *extra]
    served = cli(*args)
    local = cli(*args, "--local")
    assert served.exit_code == local.exit_code == 1
    assert served.stderr == local.stderr
    assert len(served.stderr.strip().splitlines()) == 1 and "Traceback" not in served.stderr
    db = tmp_path / "data" / "runs.sqlite3"
    if db.exists():
        with sqlite3.connect(db) as con:
            assert con.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0


def test_port_in_use_and_a_second_server(tmp_path, server, tiny_pipeline):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = subprocess.run([sys.executable, "-m", "cirkit", "serve", "--port", str(port), "-p", str(tiny_pipeline)],
                             capture_output=True, text=True, env=_env(), timeout=READY_GUARD)
    assert res.returncode == 1
    assert res.stderr.strip() == f"error: port {port} on 127.0.0.1 is already in use: choose another with --port (or set $CIRKIT_PORT)"

    res = subprocess.run([sys.executable, "-m", "cirkit", "serve", "--port", str(server.port), "-p", str(tiny_pipeline)],
                         capture_output=True, text=True, env=_env(), timeout=READY_GUARD)
    assert res.returncode == 1
    assert f"a cirkit server (pid {server.proc.pid}) is already running at {server.url}" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_bad_pipeline_is_refused_before_listening(tmp_path):
    port = free_port()
    res = subprocess.run([sys.executable, "-m", "cirkit", "serve", "--port", str(port), "-p", str(tmp_path / "nope.yaml")],
                         capture_output=True, text=True, env=_env(), timeout=READY_GUARD)
    assert res.returncode == 1
    assert res.stderr.strip() == f"error: pipeline not found: {tmp_path / 'nope.yaml'}"
    assert health(f"http://127.0.0.1:{port}") is None


def test_no_server_runs_locally_and_an_explicit_one_must_answer(cli, monkeypatch, tmp_path, gallery, gallery_index, tiny_pipeline):
    port = free_port()
    monkeypatch.setenv("CIRKIT_PORT", str(port))  # nobody listens there
    args = ["query", "-i", gallery_index, "--image", gallery / "img0001.jpg", "-t", "make it red", "-p", tiny_pipeline]
    res = cli(*args, "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["status"] == "ok"
    res = cli(*args, "--server", f"http://127.0.0.1:{port}")
    assert res.exit_code == 1
    assert res.stderr.strip() == f"error: no cirkit server answers at http://127.0.0.1:{port}: start one with `cirkit serve`, or leave out --server"
    res = cli(*args, "--server", "ftp://nowhere")
    assert res.exit_code == 1 and "bad cirkit server address" in res.stderr


class Stranger:
    """A local HTTP server that is not cirkit's (or speaks another protocol version)."""

    def __init__(self, health_body: bytes, query_body: bytes = b"", status: int = 200):
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, body):
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                self._answer(health_body)

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self._answer(query_body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


CIRKIT_HEALTH = json.dumps({"service": "cirkit", "protocol": 1, "version": "0.1.0", "pid": 1, "ready": True, "busy": False,
                            "queries": 0, "model_loads": 0, "models": []}).encode()


@pytest.mark.parametrize(
    "health_body, query_body, expected",
    [
        (b"<html>hello</html>", b"", "answered, but not as a cirkit server (HTTP 200)"),
        (json.dumps({"service": "cirkit", "protocol": 99, "version": "9.0"}).encode(), b"", "speaks protocol 99, this cirkit (0.1.0) speaks 1"),
        (CIRKIT_HEALTH, b"garbage\n", "answered something that is not cirkit's protocol"),
        (CIRKIT_HEALTH, b"", "stopped mid-query (the connection closed before the answer)"),
    ],
    ids=["not-cirkit", "other-protocol", "garbage-answer", "empty-answer"],
)
def test_strangers_on_the_port_give_one_line(cli, monkeypatch, tmp_path, gallery, gallery_index, tiny_pipeline, health_body, query_body, expected):
    stranger = Stranger(health_body, query_body)
    try:
        monkeypatch.setenv("CIRKIT_PORT", str(stranger.port))
        res = cli("query", "-i", gallery_index, "--image", gallery / "img0001.jpg", "-t", "make it red", "-p", tiny_pipeline)
    finally:
        stranger.close()
    assert res.exit_code == 1
    assert expected in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr


class StallingLLM:
    """An OpenAI-compatible endpoint that takes a chat request and answers nothing until closed."""

    def __init__(self):
        self.got_request = threading.Event()
        self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.got_request.set()
                outer.release.wait()
                self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize("how", ["kill -9", "Ctrl-C"])
def test_server_dying_mid_query(tmp_path, tiny_models, tiny_pipeline, gallery, gallery_index, how):
    llm = StallingLLM()
    pipeline = write_pipeline(tmp_path / "stall.yaml", tiny_models)
    pipeline.write_text(pipeline.read_text().replace(
        f'llm: {{type: llm, id: "{tiny_models.llm}"}}',
        f'llm: {{type: llm, engine: openai, base_url: "{llm.url}", id: tiny, max_retries: 0, timeout: 3600}}',
    ))
    data = tmp_path / "data"
    server = Server(tmp_path, "--pipeline", str(pipeline))
    try:
        server.ready()
        client = subprocess.Popen(
            [sys.executable, "-m", "cirkit", "query", "-i", str(gallery_index), "--image", str(gallery / "img0001.jpg"),
             "-t", "make it red", "-p", str(pipeline), "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=_env(CIRKIT_PORT=str(server.port), CIRKIT_DATA_DIR=str(data)),
        )
        assert llm.got_request.wait(READY_GUARD), server.stderr  # the query is inside the rewrite step now
        code = server.stop(signal.SIGKILL if how == "kill -9" else signal.SIGINT)
        out, err = client.communicate(timeout=READY_GUARD)
    finally:
        llm.close()
        server.stop(signal.SIGKILL)
    assert client.returncode == 1 and out == ""
    assert err.startswith(f"error: the cirkit server at {server.url} stopped mid-query")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    if how == "Ctrl-C":
        assert code == 0 and "cirkit serve: stopped (the query in progress was abandoned" in server.stderr
        assert "Traceback" not in server.stderr

    # the store is intact, and the unfinished run is marked failed with what it had done
    with sqlite3.connect(data / "runs.sqlite3") as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    env = _env(CIRKIT_DATA_DIR=str(data), CIRKIT_PORT=str(server.port))
    listed = json.loads(subprocess.run([sys.executable, "-m", "cirkit", "runs", "list", "--json"], capture_output=True,
                                       text=True, env=env, check=True).stdout)
    assert len(listed) == 1 and listed[0]["status"] == "failed"
    assert "stopped before this run finished" in listed[0]["error"]
    assert listed[0]["id"] in err
    shown = json.loads(subprocess.run([sys.executable, "-m", "cirkit", "runs", "show", listed[0]["id"], "--json"],
                                      capture_output=True, text=True, env=env, check=True).stdout)
    assert [(s["name"], s["status"]) for s in shown["steps"]] == [("caption", "ok")]
    table = subprocess.run([sys.executable, "-m", "cirkit", "runs", "list"], capture_output=True, text=True, env=env, check=True).stdout
    assert "failed" in table and "running" not in table


def test_ctrl_c_stops_the_server_and_frees_the_port(tmp_path, tiny_pipeline):
    server = Server(tmp_path, "--pipeline", str(tiny_pipeline))
    server.ready()
    assert server.stop(signal.SIGINT) == 0
    assert server.stderr.strip().splitlines()[-1] == "cirkit serve: stopped"
    assert "Traceback" not in server.stderr
    assert health(server.url) is None  # nobody answers there any more
    with socket.socket() as again:  # the port can be listened on again (as `cirkit serve` binds: SO_REUSEADDR)
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", server.port))
        again.listen()
