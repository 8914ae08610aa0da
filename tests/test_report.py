"""`cirkit report`: a self-contained HTML page, checked in headless Chromium (DOM and screenshot)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from PIL import Image


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("the report tests need Debian's chromium: apt-get install -y chromium")
    return path


def _chromium_run(*args: str, timeout: int = 60) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    return subprocess.run([_chromium(), *flags, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def evil_run(cli, tmp_path, gallery, gallery_index, tiny_pipeline):
    """A run with a known target whose caption (edited by hand) is a script."""
    queries = tmp_path / "q.jsonl"
    queries.write_text(json.dumps({"image": str(gallery / "img0001.jpg"), "text": "make it <b>bold</b> & red",
                                   "id": "q1", "targets": ["img0002.jpg"]}))
    assert cli("query", "-i", gallery_index, "--queries", queries, "-p", tiny_pipeline, "-k", "30").exit_code == 0
    run_id = json.loads(cli("runs", "list", "--json").stdout)[0]["id"]
    res = cli("runs", "edit", run_id, "caption", "--text", "<script>document.title='pwned'</script><img src=x onerror=alert(1)>")
    assert res.exit_code == 0, res.stderr
    return json.loads(cli("runs", "list", "--json").stdout)[0]["id"], run_id


def test_report_renders_everything_escaped(cli, tmp_path, evil_run):
    edited, original = evil_run
    out = tmp_path / "report.html"
    res = cli("report", edited, original, "--out", out, "-k", "30")
    assert res.exit_code == 0, res.stderr
    html = out.read_text()
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "src='data:image/jpeg;base64," in html and "file://" not in html  # self-contained

    dom = _chromium_run("--dump-dom", out.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = dom.stdout
    assert "<title>cirkit report: 2 runs</title>" in page  # the caption's script did not run
    assert page.count("<section class=\"run\"") == 2
    assert "&lt;script&gt;document.title='pwned'&lt;/script&gt;" in page  # shown as text
    assert "make it &lt;b&gt;bold&lt;/b&gt; &amp; red" in page
    assert "<details><summary>prompts sent and raw answers</summary>" in page  # folded away
    assert page.count("class=\"target\"") == 2  # the known target is marked in both runs (k=30 >= gallery)
    assert "EDITED" not in page and "edited" in page

    shot = tmp_path / "shot.png"
    result = _chromium_run(f"--screenshot={shot}", "--window-size=1200,1600", out.as_uri())
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    pixels = Image.open(shot).convert("RGB")
    colours = pixels.getcolors(maxcolors=1_000_000)
    assert colours is not None and len(colours) > 50  # thumbnails and text, not a blank page


def test_report_bad_input(cli, tmp_path, evil_run):
    edited, _ = evil_run
    res = cli("report", edited, "--out", tmp_path / "no" / "such" / "dir" / "r.html")
    assert res.exit_code == 1 and "does not exist" in res.stderr
    res = cli("report", "zzzz", "--out", tmp_path / "r.html")
    assert res.exit_code == 1 and "unknown run id" in res.stderr
    assert not (tmp_path / "r.html").exists()
