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


@pytest.fixture
def two_experiments(cli, tmp_path, tiny_pipeline, tiny_models):
    """`cirkit eval` twice on a small triplets set whose ids and modifications are markup: the tiny
    pipeline, then the same with another rewrite prompt."""
    from conftest import write_pipeline

    data = tmp_path / "mine"
    (data / "imgs").mkdir(parents=True)
    for i in range(10):
        Image.new("RGB", (40, 40), ((i * 70) % 256, (i * 30) % 256, (i * 110) % 256)).save(data / "imgs" / f"{i}.jpg")
    lines = [{"id": f"<i>q{i}</i>", "reference": f"imgs/{i}.jpg", "text": f"<script>alert({i})</script> brighter & bluer",
              "targets": [f"imgs/{(i + 3) % 10}.jpg"]} for i in range(8)]
    (data / "queries.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    other = write_pipeline(tmp_path / "other.yaml", tiny_models)
    other.write_text(other.read_text().replace("prompt: cirevl-rewrite,", "prompt: cirevl-rewrite-simple,"))
    ids = []
    for pipeline in (tiny_pipeline, other):
        res = cli("eval", "triplets", "--data", data, "--split", "queries", "--pipeline", pipeline, "--json")
        assert res.exit_code == 0, res.stderr
        ids.append(json.loads(res.stdout.strip().splitlines()[-1])["experiment"])
    return ids


def _dom(path) -> str:
    dom = _chromium_run("--dump-dom", path.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    return dom.stdout


def test_experiment_report_failures_all_and_capped(cli, tmp_path, two_experiments):
    exp, _ = two_experiments
    rows = json.loads(cli("runs", "failures", exp, "--k", "2", "--json").stdout)
    assert 0 < len(rows) < 8  # some queries fail at k=2, not all
    out = tmp_path / "exp.html"
    res = cli("report", "--experiment", exp[:6], "-k", "2", "--out", out)
    assert res.exit_code == 0, res.stderr
    html = out.read_text()
    assert "<script>" not in html and "<i>" not in html and "file://" not in html
    page = _dom(out)
    assert f"<title>cirkit report: experiment {exp}</title>" in page  # no script ran
    assert page.count("<section class=\"run\"") == len(rows)
    shown = {line.split("data-run=\"")[1].split("\"")[0] for line in page.splitlines() if "data-run=\"" in line}
    assert shown == {row["run_id"] for row in rows}  # exactly the failures
    assert f"{len(rows)} of 8 queries failed (target not in the top 2)" in page
    assert "&lt;script&gt;alert(" in page and "&lt;i&gt;q" in page  # shown as text
    assert "R@1" in page  # the metrics table
    assert page.count("data-step=\"caption\"") == len(rows) and page.count("data-step=\"rewrite\"") == len(rows)
    assert "target not in the top 2" in page and "image missing" not in page

    res = cli("report", "--experiment", exp, "--all", "-k", "10", "--out", out)
    assert res.exit_code == 0, res.stderr
    page = _dom(out)
    assert page.count("<section class=\"run\"") == 8 and "all 8 queries" in page
    assert page.count("class=\"target\"") == 8  # every target is in the top 10 of 10 images, and marked

    res = cli("report", "--experiment", exp, "--all", "--limit", "3", "--out", out)
    assert res.exit_code == 0, res.stderr
    page = _dom(out)
    assert page.count("<section class=\"run\"") == 3 and "showing the first 3 of 8" in page

    shot = tmp_path / "shot.png"
    result = _chromium_run(f"--screenshot={shot}", "--window-size=1200,1600", out.as_uri())
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    colours = Image.open(shot).convert("RGB").getcolors(maxcolors=1_000_000)
    assert colours is not None and len(colours) > 50


def test_compare_report_side_by_side(cli, tmp_path, two_experiments):
    a, b = two_experiments
    diff = json.loads(cli("eval", "compare", a, b, "--json").stdout)
    assert diff["better"] or diff["worse"]
    out = tmp_path / "cmp.html"
    res = cli("report", "--compare", a, b, "--out", out)
    assert res.exit_code == 0, res.stderr
    assert "<script>" not in out.read_text()
    page = _dom(out)
    assert f"<title>cirkit report: experiment {a} vs {b}</title>" in page
    for kind in ("better", "worse"):
        assert f"<h2 class=\"{kind}\" data-count=\"{len(diff[kind])}\">" in page
        assert page.count(f"<div class=\"pair {kind}\"") == len(diff[kind])
        for row in diff[kind]:
            arrow = f"{row['rank_a'] or 'not found'} → {row['rank_b'] or 'not found'}"
            assert page.count(arrow) >= 2  # in the heads of both runs
            assert f"data-run=\"{row['run_b']}\"" in page
    assert page.count("<section class=\"run\"") == 2 * (len(diff["better"]) + len(diff["worse"]))

    res = cli("report", "--compare", a, b, "--limit", "1", "--out", out)
    page = _dom(out)
    assert page.count("<section class=\"run\"") == 2 * (min(1, len(diff["better"])) + min(1, len(diff["worse"])))


def test_experiment_report_bad_input(cli, tmp_path, two_experiments):
    a, b = two_experiments
    cases = [
        (["--experiment", "nope"], "unknown experiment"),
        (["--compare", a, "nope"], "unknown experiment"),
        (["--experiment", a, "--compare", a, b], "not --experiment and --compare"),
        ([], "give run ids, --experiment ID or --compare A B"),
        (["--compare", a, b, "--all"], "--all goes with --experiment"),
        (["--experiment", a, "--out", tmp_path / "no" / "r.html"], "does not exist"),
    ]
    for args, message in cases:
        res = cli("report", *args, "--out", tmp_path / "r.html") if "--out" not in args else cli("report", *args)
        assert res.exit_code != 0 and message in res.stderr, (args, res.stderr)
        assert "Traceback" not in res.stderr
    res = cli("report", "--experiment", a, "--limit", "0")
    assert res.exit_code != 0 and "Traceback" not in res.stderr
    assert not (tmp_path / "r.html").exists()


def test_experiment_report_pages_link_each_other_and_show_every_query_once(cli, tmp_path, two_experiments):
    import re
    import sqlite3
    from urllib.parse import unquote

    exp, _ = two_experiments
    store = sqlite3.connect(tmp_path / "data" / "runs.sqlite3")
    runs = [run_id for (run_id,) in store.execute("SELECT run_id FROM experiment_runs WHERE experiment_id=?", (exp,))]
    assert len(runs) == 8
    out = tmp_path / "pages" / "all.html"
    out.parent.mkdir()
    res = cli("report", "--experiment", exp, "--all", "--page-size", "3", "--out", out)
    assert res.exit_code == 0, res.stderr
    names = ["all.html", "all-2.html", "all-3.html"]
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(names) and "3 pages" in res.stdout

    seen: list[str] = []
    for number, name in enumerate(names):
        path = out.parent / name
        assert "<script>" not in path.read_text() and "file://" not in path.read_text()
        page = _dom(path)
        assert f"<title>cirkit report: experiment {exp} (page {number + 1} of 3)</title>" in page  # no script ran
        assert "all 8 queries" in page and "R@1" in page
        on_page = re.findall(r"<section class=\"run\" id=\"run-\w+\" data-run=\"(\w+)\"", page)
        assert len(on_page) == (3 if number < 2 else 2)
        assert f"queries {3 * number + 1}–{3 * number + len(on_page)} of 8" in page
        seen += on_page
        # previous and next, then an index of every page, at the top and the bottom
        links = re.findall(r"<a href=\"([^\"]+)\"(?: rel=\"(prev|next)\")?>", page)
        rel = {r: unquote(href) for href, r in links if r}
        assert rel.get("prev") == (names[number - 1] if number else None)
        assert rel.get("next") == (names[number + 1] if number < 2 else None)
        assert {unquote(href) for href, r in links if not r} == set(names) - {name}
        assert page.count("<nav class=\"pages\">") == 2
        assert all((out.parent / unquote(href)).is_file() for href, _ in links)
    assert sorted(seen) == sorted(runs)  # every query, once

    # --limit still caps the report, before it is paged
    res = cli("report", "--experiment", exp, "--all", "--limit", "5", "--page-size", "2", "--out", tmp_path / "five.html")
    assert res.exit_code == 0, res.stderr
    pages = [_dom(tmp_path / name) for name in ("five.html", "five-2.html", "five-3.html")]
    assert [p.count("<section class=\"run\"") for p in pages] == [2, 2, 1] and not (tmp_path / "five-4.html").exists()
    assert all("showing the first 5 of 8" in p for p in pages)
    # one page: no page links, the title as before
    res = cli("report", "--experiment", exp, "--all", "--out", tmp_path / "one.html")
    page = _dom(tmp_path / "one.html")
    assert page.count("<section class=\"run\"") == 8 and "<nav" not in page and not (tmp_path / "one-2.html").exists()

    res = cli("report", "--compare", exp, exp, "--page-size", "2", "--out", tmp_path / "c.html")
    assert res.exit_code == 1 and "--page-size goes with --experiment" in res.stderr
