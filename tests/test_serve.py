"""`cirkit serve`: a real server process on a free port, queried through the real CLI.

The server keeps the tiny models loaded; a query through it gives the same result, output and
stored run as `cirkit query --local`. Bad ports, dying servers and strangers on the port give one line.
It acts only for requests that carry its token: a web page in a real browser, a request without the
token or with a wrong one, and a request for another host name get nothing done.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import stat
import socket
import sqlite3
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cirkit.serve.client import free_port, health, wait_until_ready
from cirkit.serve.protocol import PROTOCOL, PROTOCOL_HEADER, TOKEN_DIR_ENV, TOKEN_HEADER, read_token, token_path, write_token
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


@pytest.fixture(scope="module", autouse=True)
def token_dir(tmp_path_factory):
    """Servers and clients of this module keep their tokens in a directory of their own."""
    directory = tmp_path_factory.mktemp("tokens") / "cirkit"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(TOKEN_DIR_ENV, str(directory))
        yield directory


def owner_health(server):
    """The server's health as its owner sees it (with the token)."""
    return health(server.url, token=read_token(server.port))


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
    before = owner_health(server)
    assert before.ready and before.model_loads == 3  # captioner, LLM, CLIP loaded at start

    args = ["query", "-i", gallery_index, "--image", gallery / "img0004.jpg", "-t", "make it red", "-p", tiny_pipeline, "-k", "5"]
    data, local_data = ["--data-dir", tmp_path / "data"], ["--data-dir", tmp_path / "local"]
    served = cli(*data, *args, "--json")
    assert served.exit_code == 0, served.stderr
    assert engine_calls_counter == []  # nothing ran in this process: the server's models answered
    after = owner_health(server)
    assert after.queries == before.queries + 1
    assert after.model_loads == before.model_loads  # warm: no model loaded again
    run = json.loads(served.stdout)
    assert run["status"] == "ok" and len(run["results"]) == 5

    # the server wrote the run into this client's run store
    listed = json.loads(cli(*data, "runs", "list", "--json").stdout)
    assert [r["id"] for r in listed] == [run["id"]]
    stored = json.loads(cli(*data, "runs", "show", run["id"], "--json").stdout)
    assert [s["origin"] for s in stored["steps"]] == ["ran"] * 4

    local = cli(*local_data, *args, "--json", "--local")
    assert local.exit_code == 0, local.stderr
    assert engine_calls_counter  # --local ran the models here
    same = _same_run(run, json.loads(local.stdout))
    assert same["steps"][0]["outputs"]["caption"]

    # the table output is the same too (but for the run id)
    served_table = cli(*data, *args)
    local_table = cli(*local_data, *args, "--local")
    assert served_table.exit_code == local_table.exit_code == 0
    served_id = json.loads(cli(*data, "runs", "list", "--json").stdout)[0]["id"]
    local_id = json.loads(cli(*local_data, "runs", "list", "--json").stdout)[0]["id"]
    assert served_table.stdout.replace(served_id, "ID") == local_table.stdout.replace(local_id, "ID")
    assert "caption (caption):" in served_table.stdout


def test_queries_file_through_the_server(cli, use_server, tmp_path, gallery, gallery_index, tiny_pipeline):
    queries = tmp_path / "q.jsonl"
    lines = [
        {"image": str(gallery / "img0001.jpg"), "text": "make it red", "id": "a"},
        {"image": str(gallery / "img0002.jpg"), "text": "a blue one", "id": "b", "targets": ["img0005.jpg"]},
    ]
    queries.write_text("".join(json.dumps(line) + "\n" for line in lines))
    before = owner_health(use_server).queries
    served = cli("query", "-i", gallery_index, "--queries", queries, "-p", tiny_pipeline, "-k", "3", "--json")
    assert served.exit_code == 0, served.stderr
    assert owner_health(use_server).queries == before + 2
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


CIRKIT_HEALTH = json.dumps({"service": "cirkit", "protocol": PROTOCOL, "version": "0.1.0", "pid": 1, "ready": True, "busy": False,
                            "queries": 0, "model_loads": 0, "models": []}).encode()


@pytest.mark.parametrize(
    "health_body, query_body, expected",
    [
        (b"<html>hello</html>", b"", "answered, but not as a cirkit server (HTTP 200)"),
        (json.dumps({"service": "cirkit", "protocol": 99, "version": "9.0"}).encode(), b"", f"speaks protocol 99, this cirkit (0.1.0) speaks {PROTOCOL}"),
        (CIRKIT_HEALTH, b"garbage\n", "answered something that is not cirkit's protocol"),
        (CIRKIT_HEALTH, b"", "stopped mid-query (the connection closed before the answer)"),
    ],
    ids=["not-cirkit", "other-protocol", "garbage-answer", "empty-answer"],
)
def test_strangers_on_the_port_give_one_line(cli, monkeypatch, tmp_path, gallery, gallery_index, tiny_pipeline, health_body, query_body, expected):
    stranger = Stranger(health_body, query_body)
    write_token(stranger.port)  # as if this user had started a server there
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


# ---------------------------------------------------------------- only the owner gets anything done


def _request(server, body: bytes | None = None, *, method: str = "POST", path: str = "/query", **headers: str):
    """One raw HTTP request to the server: (status, JSON answer)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read().splitlines()[0])
    finally:
        conn.close()


def _valid_body(victim: Path, gallery, gallery_index, tiny_pipeline) -> bytes:
    """A query this server would run, into a run store at `victim`."""
    return json.dumps({"data_dir": str(victim), "index": str(gallery_index), "pipeline": str(tiny_pipeline), "k": 3,
                       "queries": [{"image": str(gallery / "img0001.jpg"), "text": "make it red"}]}).encode()


def _nothing_done(server, victim: Path, queries_before: int) -> None:
    assert not victim.exists()  # no run store, not even its directory
    assert owner_health(server).queries == queries_before


def test_the_token_file_is_private_and_health_tells_strangers_nothing(server, token_dir):
    path = token_path(server.port)
    assert path.parent == token_dir
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(token_dir.stat().st_mode) == 0o700
    assert path.stat().st_uid == os.getuid()
    token = read_token(server.port)
    assert len(token) >= 40

    status, public = _request(server, method="GET", path="/health")
    assert status == 200
    assert set(public) == {"service", "protocol", "version", "pid", "ready"}
    status, full = _request(server, method="GET", path="/health", **{TOKEN_HEADER: token})
    assert status == 200 and full["model_loads"] == 3 and len(full["models"]) == 3

    path.chmod(0o644)  # a token others can read is not used
    try:
        with pytest.raises(Exception, match="can be read by other users"):
            read_token(server.port)
    finally:
        path.chmod(0o600)


@pytest.mark.parametrize("case", ["no token", "wrong token", "token of another length"])
def test_a_request_without_the_token_gets_401_and_does_nothing(server, tmp_path, gallery, gallery_index, tiny_pipeline, case):
    victim = tmp_path / "victim-data"
    before = owner_health(server).queries
    headers = {"Content-Type": "application/json", PROTOCOL_HEADER: str(PROTOCOL)}
    if case == "wrong token":
        token = read_token(server.port)
        headers[TOKEN_HEADER] = token[:-1] + ("A" if token[-1] != "A" else "B")
    elif case == "token of another length":
        headers[TOKEN_HEADER] = "x"
    status, answer = _request(server, _valid_body(victim, gallery, gallery_index, tiny_pipeline), **headers)
    assert status == 401
    assert ("no token" if case == "no token" else "wrong token") in answer["error"]
    assert str(token_path(server.port)) in answer["error"] and "\n" not in answer["error"]
    _nothing_done(server, victim, before)
    if case != "no token":
        status, _ = _request(server, method="GET", path="/health", **{TOKEN_HEADER: headers[TOKEN_HEADER]})
        assert status == 401


@pytest.mark.parametrize("host", ["evil.example:{port}", "127.0.0.1:1", "localhost", "127.0.0.1.nip.io:{port}"])
def test_a_foreign_host_header_gets_403_even_with_the_token(server, tmp_path, gallery, gallery_index, tiny_pipeline, host):
    victim = tmp_path / "victim-data"
    before = owner_health(server).queries
    host = host.format(port=server.port)
    headers = {"Content-Type": "application/json", PROTOCOL_HEADER: str(PROTOCOL), TOKEN_HEADER: read_token(server.port), "Host": host}
    status, answer = _request(server, _valid_body(victim, gallery, gallery_index, tiny_pipeline), **headers)
    assert status == 403 and f"not to Host '{host}'" in answer["error"]
    status, _ = _request(server, method="GET", path="/health", Host=host)
    assert status == 403
    _nothing_done(server, victim, before)
    # the same request for the address the server listens on is answered
    headers["Host"] = f"localhost:{server.port}"
    status, answer = _request(server, _valid_body(victim, gallery, gallery_index, tiny_pipeline), **headers)
    assert status == 200 and "run" in answer
    assert victim.is_dir()


def test_an_origin_header_gets_403_even_with_the_token(server, tmp_path, gallery, gallery_index, tiny_pipeline):
    victim = tmp_path / "victim-data"
    before = owner_health(server).queries
    headers = {"Content-Type": "application/json", PROTOCOL_HEADER: str(PROTOCOL), TOKEN_HEADER: read_token(server.port)}
    for origin in ("http://127.0.0.1:1", "null", f"http://127.0.0.1:{server.port}"):
        status, answer = _request(server, _valid_body(victim, gallery, gallery_index, tiny_pipeline), **headers, Origin=origin)
        assert status == 403 and "does not answer web pages" in answer["error"]
    status, _ = _request(server, method="GET", path="/health", Origin="http://127.0.0.1:1")
    assert status == 403
    _nothing_done(server, victim, before)


def test_a_request_with_relative_paths_is_refused(server, tmp_path, gallery, gallery_index, tiny_pipeline):
    before = owner_health(server).queries
    body = json.loads(_valid_body(tmp_path / "data", gallery, gallery_index, tiny_pipeline))
    body["queries"][0]["image"] = "img0001.jpg"
    headers = {"Content-Type": "application/json", PROTOCOL_HEADER: str(PROTOCOL), TOKEN_HEADER: read_token(server.port)}
    status, answer = _request(server, json.dumps(body).encode(), **headers)
    assert status == 400 and "queries.0.image: 'img0001.jpg' is not an absolute path" in answer["error"]
    status, answer = _request(server, _valid_body(tmp_path / "data", gallery, gallery_index, tiny_pipeline),
                              **{**headers, "Content-Type": "text/plain"})
    assert status == 415
    _nothing_done(server, tmp_path / "data", before)


BROWSER_PAGE = """<!doctype html><html><head><title>waiting</title></head><body><script>
const target = "http://127.0.0.1:{port}";
const body = JSON.stringify({body});
const attempts = [
  fetch(target + "/query", {{method: "POST", headers: {{"Content-Type": "text/plain"}}, body}}),
  fetch(target + "/query", {{method: "POST", mode: "no-cors", body}}),
  fetch(target + "/query", {{method: "POST", mode: "no-cors", headers: {{"Content-Type": "text/plain"}}, body}}),
  fetch(target + "/health", {{mode: "no-cors"}}),
];
Promise.allSettled(attempts).then(results => {{
  document.title = "done " + results.map(r => r.status).join(",");
}});
</script></body></html>"""


def test_a_web_page_in_a_browser_gets_nothing_done(server, tmp_path, gallery, gallery_index, tiny_pipeline):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("this test needs Debian's chromium: apt-get install -y chromium")
    victim = tmp_path / "victim-data"
    before = owner_health(server).queries
    log_before = len(server.stderr.splitlines())
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text(BROWSER_PAGE.format(port=server.port, body=_valid_body(victim, gallery, gallery_index, tiny_pipeline).decode()))

    class Quiet(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(site), **kwargs)

        def log_message(self, *args):
            pass

    page_server = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    page_server.daemon_threads = True
    threading.Thread(target=page_server.serve_forever, daemon=True).start()
    page = f"http://127.0.0.1:{page_server.server_address[1]}/index.html"
    try:
        dom = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-proxy-server",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom", page],
            capture_output=True, text=True, timeout=120,
        )
    finally:
        page_server.shutdown()
        page_server.server_close()
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "<title>done " in dom.stdout, dom.stdout[-2000:]  # the page's script ran to the end

    refused = [line for line in server.stderr.splitlines()[log_before:] if line.startswith("refused ")]
    origin = f"Origin: http://127.0.0.1:{page_server.server_address[1]}"
    assert sum(line.startswith("refused POST /query (HTTP 403)") and origin in line for line in refused) == 3, refused
    _nothing_done(server, victim, before)


def test_the_client_needs_the_servers_token(cli, use_server, monkeypatch, tmp_path, gallery, gallery_index, tiny_pipeline):
    args = ["query", "-i", gallery_index, "--image", gallery / "img0001.jpg", "-t", "make it red", "-p", tiny_pipeline]
    elsewhere = tmp_path / "other-tokens"
    monkeypatch.setenv(TOKEN_DIR_ENV, str(elsewhere))  # as another user (or another token directory) sees it
    res = cli(*args)
    assert res.exit_code == 1
    assert res.stderr.strip() == (f"error: a cirkit server answers at {use_server.url}, but its token file "
                                  f"{elsewhere / f'serve-{use_server.port}.token'} does not exist (a server started by another "
                                  f"user, or with another ${TOKEN_DIR_ENV}?): only the user who started it can use it; use "
                                  "--local, or another --port")
    stale, _ = write_token(use_server.port)  # a token, but not the server's
    res = cli(*args)
    assert res.exit_code == 1 and "refused the query: wrong token" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    stale.chmod(0o640)
    res = cli(*args)
    assert res.exit_code == 1 and f"{stale} can be read by other users (mode 640)" in res.stderr
    assert not (tmp_path / "data").exists()


def test_relative_paths_from_another_directory(cli, use_server, monkeypatch, tmp_path, gallery, gallery_index, tiny_pipeline):
    """The client's paths are made absolute: the server, started elsewhere, reads the same files."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(gallery / "img0004.jpg", work / "ref.jpg")
    shutil.copy(tiny_pipeline, work / "pipe.yaml")
    (work / "q.jsonl").write_text(json.dumps({"image": "ref.jpg", "text": "make it red", "id": "r"}) + "\n")
    monkeypatch.chdir(work)
    index = os.path.relpath(gallery_index, work)
    before = owner_health(use_server).queries
    res = cli("--data-dir", "data", "query", "-i", index, "--image", "ref.jpg", "-t", "make it red", "-p", "pipe.yaml", "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["inputs"]["image"] == str(work / "ref.jpg")
    res = cli("--data-dir", "data", "query", "-i", index, "--queries", "q.jsonl", "-p", "pipe.yaml", "--json")
    assert res.exit_code == 0, res.stderr
    assert owner_health(use_server).queries == before + 2
    assert (work / "data" / "runs.sqlite3").is_file()
    (work / "q.jsonl").write_text(json.dumps({"image": "gone.jpg", "text": "make it red"}) + "\n")
    served = cli("query", "-i", index, "--queries", "q.jsonl", "-p", "pipe.yaml")
    local = cli("query", "-i", index, "--queries", "q.jsonl", "-p", "pipe.yaml", "--local")
    assert served.exit_code == local.exit_code == 1
    assert served.stderr == local.stderr and "gone.jpg" in served.stderr and str(work) not in served.stderr
