"""Fixing runs by hand: step cache, edit, re-run from a step, batch overrides, diff, export."""

from __future__ import annotations

import json
import sqlite3

import pytest

from conftest import write_pipeline


@pytest.fixture
def engine_calls(engine_calls_counter):
    return engine_calls_counter


def _query(cli, index, image, pipeline, *extra):
    res = cli("query", "-i", index, "--image", image, "-t", "make it red", "-p", pipeline, "--json", *extra)
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)


def _show(cli, run_id):
    res = cli("runs", "show", run_id, "--json")
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)


def _origins(run):
    return [(s["name"], s["origin"]) for s in run["steps"]]


def _db_rows(tmp_path):
    with sqlite3.connect(tmp_path / "data" / "runs.sqlite3") as con:
        return con.execute("SELECT COUNT(*) FROM runs").fetchone()[0], con.execute("SELECT COUNT(*) FROM steps").fetchone()[0]


def test_edit_caption_reruns_only_what_follows(cli, tmp_path, gallery, gallery_index, tiny_models, tiny_pipeline, engine_calls):
    run = _query(cli, gallery_index, gallery / "img0001.jpg", tiny_pipeline)
    before = _show(cli, run["id"])
    engine_calls.clear()

    res = cli("runs", "edit", run["id"], "caption", "--text", "a small red square on a white background")
    assert res.exit_code == 0, res.stderr
    assert "ran rewrite, embed, search" in res.stdout
    new_id = _show(cli, json.loads(cli("runs", "list", "--json").stdout)[0]["id"])["id"]
    new = _show(cli, new_id)
    assert new["parent_id"] == run["id"]
    assert new["change"]["edited"] == "caption"
    assert _origins(new) == [("caption", "edited"), ("rewrite", "ran"), ("embed", "ran"), ("search", "ran")]
    assert new["steps"][0]["outputs"]["caption"] == "a small red square on a white background"
    assert "Image Content: a small red square on a white background" in new["steps"][1]["prompts"][0][-1]["content"]
    # the captioner was not called again; the LLM was, once
    assert [m for m, _ in engine_calls] == [str(tiny_models.llm)]
    # the original run is unchanged
    assert _show(cli, run["id"]) == before

    diff = cli("runs", "diff", run["id"], new_id, "--json")
    assert diff.exit_code == 0, diff.stderr
    changes = {s["step"]: s for s in json.loads(diff.stdout)["steps"]}
    assert changes["caption"]["changed"] and changes["caption"]["b"] == ["a small red square on a white background"]
    assert changes["rewrite"]["changed"]
    table = cli("runs", "diff", run["id"], new_id)
    assert "Top 10 ranks" in table.stdout and "Intermediates" in table.stdout
    shown = cli("runs", "show", new_id)
    assert "EDITED BY HAND" in shown.stdout and f"derived from run {run['id']}" in shown.stdout


def test_swapping_a_template_reruns_from_that_step(cli, gallery, gallery_index, tiny_models, tiny_pipeline, engine_calls):
    run = _query(cli, gallery_index, gallery / "img0002.jpg", tiny_pipeline)
    engine_calls.clear()
    res = cli("runs", "rerun", run["id"], "--from", "rewrite", "--prompt", "rewrite=cirevl-rewrite-short")
    assert res.exit_code == 0, res.stderr
    new = _show(cli, json.loads(cli("runs", "list", "--json").stdout)[0]["id"])
    # the embed step re-runs only if the rewrite's text changed (the random LLM falls back to the same text)
    same_text = new["steps"][1]["outputs"]["descriptions"] == run["steps"][1]["outputs"]["descriptions"]
    embed = "cache" if same_text else "ran"
    assert _origins(new) == [("caption", "copied"), ("rewrite", "ran"), ("embed", embed), ("search", "ran")]
    assert new["steps"][1]["templates"][0]["name"] == "cirevl-rewrite-short"
    assert [m for m, _ in engine_calls] == [str(tiny_models.llm)]


def test_step_cache_and_no_cache(cli, gallery, gallery_index, tiny_pipeline, engine_calls):
    first = _query(cli, gallery_index, gallery / "img0004.jpg", tiny_pipeline)
    assert _origins(first) == [("caption", "ran"), ("rewrite", "ran"), ("embed", "ran"), ("search", "ran")]
    engine_calls.clear()
    second = _query(cli, gallery_index, gallery / "img0004.jpg", tiny_pipeline)
    assert _origins(second) == [("caption", "cache"), ("rewrite", "cache"), ("embed", "cache"), ("search", "ran")]
    assert engine_calls == []
    assert second["results"] == first["results"]
    assert second["steps"][1]["outputs"] == first["steps"][1]["outputs"]
    third = _query(cli, gallery_index, gallery / "img0004.jpg", tiny_pipeline, "--no-cache")
    assert _origins(third) == [("caption", "ran"), ("rewrite", "ran"), ("embed", "ran"), ("search", "ran")]
    assert len(engine_calls) == 2
    # another template for the rewrite: the caption still comes from the cache
    engine_calls.clear()
    swapped = _query(cli, gallery_index, gallery / "img0004.jpg", tiny_pipeline, "--prompt", "rewrite=cirevl-rewrite-simple")
    assert _origins(swapped)[:2] == [("caption", "cache"), ("rewrite", "ran")]
    assert len(engine_calls) == 1


def test_changing_the_clip_model_reuses_captions_and_rewrites(cli, tmp_path, gallery, gallery_index, tiny_models, tiny_pipeline):
    from tiny_models import build_tiny_clip

    from cirkit.api import index_folder

    config, checkpoint = build_tiny_clip(tmp_path / "other", name="cirkit-other-clip")
    other = write_pipeline(tmp_path / "other.yaml", tiny_models)
    other.write_text(other.read_text().replace(str(tiny_models.clip_config), str(config)).replace(str(tiny_models.clip_checkpoint), str(checkpoint)))
    other_index = tmp_path / "other-index"
    index_folder(gallery, other_index, pipeline=other)
    _query(cli, gallery_index, gallery / "img0005.jpg", tiny_pipeline)
    run = _query(cli, other_index, gallery / "img0005.jpg", other)
    assert _origins(run) == [("caption", "cache"), ("rewrite", "cache"), ("embed", "ran"), ("search", "ran")]


def test_batch_overrides(cli, tmp_path, gallery, gallery_index, tiny_models, tiny_pipeline, engine_calls):
    lines = [{"image": str(gallery / f"img{i:04d}.jpg"), "text": "make it red", "id": f"q{i}"} for i in (1, 2)]
    queries = tmp_path / "q.jsonl"
    queries.write_text("\n".join(json.dumps(x) for x in lines))
    assert cli("query", "-i", gallery_index, "--queries", queries, "-p", tiny_pipeline).exit_code == 0
    runs = json.loads(cli("runs", "list", "--json").stdout)
    by_query = {_show(cli, r["id"])["inputs"]["query_id"]: r["id"] for r in runs}
    engine_calls.clear()

    overrides = tmp_path / "fix.jsonl"
    overrides.write_text(
        json.dumps({"run_id": by_query["q1"], "step": "caption", "text": "a blue circle"}) + "\n"
        + json.dumps({"query_id": "q2", "step": "caption", "text": "a green star"}) + "\n"
        + json.dumps({"run_id": "nosuchrun", "step": "caption", "text": "x"}) + "\n"
        + json.dumps({"run_id": by_query["q1"], "step": "caption"}) + "\n"
    )
    counts = _db_rows(tmp_path)
    res = cli("runs", "apply", overrides)
    assert res.exit_code == 1
    assert "fix.jsonl line 3: unknown run id 'nosuchrun'" in res.stderr
    assert "fix.jsonl line 4: expected run_id or query_id, step and text" in res.stderr
    assert "nothing applied" in res.stderr
    assert _db_rows(tmp_path) == counts

    res = cli("runs", "apply", overrides, "--partial")
    assert res.exit_code == 1 and "2 bad row(s) skipped" in res.stderr
    assert "2 runs revised" in res.stdout
    new = [_show(cli, r["id"]) for r in json.loads(cli("runs", "list", "--json").stdout)[:2]]
    assert {n["steps"][0]["outputs"]["caption"] for n in new} == {"a blue circle", "a green star"}
    # both rewrites in one batch, no captioning
    assert engine_calls == [(str(tiny_models.llm), 2)]

    csv_file = tmp_path / "fix.csv"
    csv_file.write_text(f"run_id,step,text\n{by_query['q1']},rewrite,a red thing\n")
    res = cli("runs", "apply", csv_file)
    assert res.exit_code == 0, res.stderr
    newest = _show(cli, json.loads(cli("runs", "list", "--json").stdout)[0]["id"])
    assert _origins(newest) == [("caption", "copied"), ("rewrite", "edited"), ("embed", "ran"), ("search", "ran")]
    assert newest["steps"][2]["prompts"] == ["a red thing"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["runs", "edit", "zzzz", "caption", "--text", "x"], "unknown run id 'zzzz'"),
        (["runs", "edit", "RUN", "nostep", "--text", "x"], "has no step 'nostep'"),
        (["runs", "edit", "RUN", "embed", "--text", "x"], "has no text output to edit"),
        (["runs", "edit", "RUN", "caption", "--text", "  "], "is empty"),
        (["runs", "edit", "RUN", "caption"], "give --text or --file"),
        (["runs", "rerun", "RUN", "--from", "nostep"], "has no step 'nostep'"),
        (["runs", "rerun", "RUN", "--prompt", "rewrite=nope"], "unknown prompt 'nope'"),
        (["runs", "export", "RUN", "--out", "/no/such/dir/x.jsonl"], "does not exist"),
        (["runs", "show", "zzzz"], "unknown run id"),
    ],
)
def test_bad_revisions_change_nothing(cli, tmp_path, gallery, gallery_index, tiny_pipeline, monkeypatch, args, message):
    monkeypatch.delenv("EDITOR", raising=False)
    monkeypatch.delenv("VISUAL", raising=False)
    run = _query(cli, gallery_index, gallery / "img0001.jpg", tiny_pipeline)
    counts = _db_rows(tmp_path)
    res = cli(*[run["id"] if a == "RUN" else a for a in args])
    assert res.exit_code == 1, res.stdout
    assert message in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert _db_rows(tmp_path) == counts


def test_edit_with_editor_and_file(cli, tmp_path, gallery, gallery_index, tiny_pipeline, monkeypatch):
    run = _query(cli, gallery_index, gallery / "img0001.jpg", tiny_pipeline)
    editor = tmp_path / "editor.sh"
    editor.write_text('#!/bin/sh\nprintf "a caption typed in the editor" > "$1"\n')
    editor.chmod(0o755)
    monkeypatch.setenv("EDITOR", str(editor))
    assert cli("runs", "edit", run["id"], "caption").exit_code == 0
    newest = _show(cli, json.loads(cli("runs", "list", "--json").stdout)[0]["id"])
    assert newest["steps"][0]["outputs"]["caption"] == "a caption typed in the editor"
    text_file = tmp_path / "caption.txt"
    text_file.write_text("a caption from a file\n")
    assert cli("runs", "edit", run["id"], "caption", "--file", text_file).exit_code == 0
    newest = _show(cli, json.loads(cli("runs", "list", "--json").stdout)[0]["id"])
    assert newest["steps"][0]["outputs"]["caption"] == "a caption from a file"


def test_export(cli, tmp_path, gallery, gallery_index, tiny_pipeline):
    a = _query(cli, gallery_index, gallery / "img0001.jpg", tiny_pipeline)
    b = _query(cli, gallery_index, gallery / "img0002.jpg", tiny_pipeline)
    out = tmp_path / "runs.jsonl"
    res = cli("runs", "export", "--out", out)
    assert res.exit_code == 0 and "exported 2 runs" in res.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [a["id"], b["id"]]
    assert rows[0] == _show(cli, a["id"])
    res = cli("runs", "export", b["id"], "--out", out)
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [b["id"]]


def test_rerun_uses_the_stored_pipeline_text_unless_given_another(cli, tmp_path, gallery, gallery_index, tiny_models):
    path = write_pipeline(tmp_path / "mine.yaml", tiny_models)
    run = _query(cli, gallery_index, gallery / "img0004.jpg", path)
    original = _show(cli, run["id"])
    stored_text = original["pipeline"]["text"]
    path.write_text(stored_text.replace("prompt: cirevl-rewrite,", "prompt: cirevl-rewrite-short,"))

    res = cli("runs", "rerun", run["id"], "--from", "rewrite")
    assert res.exit_code == 0, res.stderr
    assert f"pipeline file {path} changed since run {run['id']}; using the stored text" in res.stderr
    new = _show(cli, json.loads(cli("runs", "list", "--json").stdout)[0]["id"])
    assert new["parent_id"] == run["id"]
    assert new["pipeline"]["text"] == stored_text and new["pipeline"]["hash"] == original["pipeline"]["hash"]
    assert new["steps"][1]["templates"][0]["name"] == "cirevl-rewrite"
    assert "changed since run" in new["change"]["note"]

    # with --pipeline, the file as it is now
    res = cli("runs", "rerun", run["id"], "--from", "rewrite", "--pipeline", path)
    assert res.exit_code == 0, res.stderr
    assert "using the stored text" not in res.stderr
    newer = _show(cli, json.loads(cli("runs", "list", "--json").stdout)[0]["id"])
    assert newer["steps"][1]["templates"][0]["name"] == "cirevl-rewrite-short"
    assert newer["pipeline"]["hash"] != original["pipeline"]["hash"] and "note" not in newer["change"]

    # the file gone: the stored text still re-runs, from the first step by default
    path.unlink()
    res = cli("runs", "rerun", run["id"])
    assert res.exit_code == 0, res.stderr
    assert f"pipeline file {path} is gone since run {run['id']}; using the stored text" in res.stderr
    gone = _show(cli, json.loads(cli("runs", "list", "--json").stdout)[0]["id"])
    assert gone["steps"][0]["origin"] in ("ran", "cache") and gone["pipeline"]["hash"] == original["pipeline"]["hash"]


def test_rerun_of_an_unchanged_pipeline_says_nothing(cli, gallery, gallery_index, tiny_pipeline):
    run = _query(cli, gallery_index, gallery / "img0004.jpg", tiny_pipeline)
    res = cli("runs", "rerun", run["id"], "--from", "search")
    assert res.exit_code == 0, res.stderr
    assert "note:" not in res.stderr
    new = _show(cli, json.loads(cli("runs", "list", "--json").stdout)[0]["id"])
    assert "note" not in new["change"] and new["pipeline"]["source"] == str(tiny_pipeline)


def test_rerun_applies_the_stored_overrides_again(cli, tmp_path, gallery, gallery_index, tiny_pipeline):
    run = _query(cli, gallery_index, gallery / "img0004.jpg", tiny_pipeline)
    with sqlite3.connect(tmp_path / "data" / "runs.sqlite3") as con:
        con.execute("UPDATE runs SET overrides = ? WHERE id = ?",
                    (json.dumps({"prompts": {"rewrite": ["cirevl-rewrite-short"]}}), run["id"]))
    con.close()
    assert cli("runs", "rerun", run["id"], "--from", "rewrite").exit_code == 0
    new = _show(cli, json.loads(cli("runs", "list", "--json").stdout)[0]["id"])
    assert new["steps"][1]["templates"][0]["name"] == "cirevl-rewrite-short"
    # a --prompt given now wins over the stored one
    assert cli("runs", "rerun", run["id"], "--from", "rewrite", "--prompt", "rewrite=cirevl-rewrite-simple").exit_code == 0
    newer = _show(cli, json.loads(cli("runs", "list", "--json").stdout)[0]["id"])
    assert newer["steps"][1]["templates"][0]["name"] == "cirevl-rewrite-simple"
