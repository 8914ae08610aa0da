"""End to end: `cirkit query` on tiny models, every intermediate stored and shown, bad input refused."""

from __future__ import annotations

import json
import sqlite3

import pytest
from PIL import Image

from conftest import write_pipeline


def _run_count(tmp_path) -> int:
    db = tmp_path / "data" / "runs.sqlite3"
    if not db.exists():
        return 0
    with sqlite3.connect(db) as con:
        return con.execute("SELECT COUNT(*) FROM runs").fetchone()[0]


def test_query_prints_ranked_results_and_stores_every_intermediate(cli, gallery, gallery_index, tiny_pipeline):
    ref = gallery / "img0001.jpg"
    res = cli("query", "--index", gallery_index, "--image", ref, "--text", "make it red", "--pipeline", tiny_pipeline, "-k", "5", "--json")
    assert res.exit_code == 0, res.stderr
    run = json.loads(res.stdout)
    assert len(run["results"]) == 5
    assert [r["rank"] for r in run["results"]] == [1, 2, 3, 4, 5]
    scores = [r["score"] for r in run["results"]]
    assert scores == sorted(scores, reverse=True)
    assert all((gallery / r["path"]).is_file() for r in run["results"])
    steps = {s["name"]: s for s in run["steps"]}
    assert list(steps) == ["caption", "rewrite", "embed", "search"]
    caption = steps["caption"]["outputs"]["caption"]
    assert caption and isinstance(caption, str)
    rewrite = steps["rewrite"]
    sent = rewrite["prompts"][0][-1]["content"]
    assert sent.endswith(f"Image Content: {caption}\nInstruction: make it red")
    assert rewrite["raw"] and isinstance(rewrite["raw"][0], str)
    assert rewrite["model"]["engine"] == "transformers"
    assert rewrite["params"]["temperature"] == 0.0
    # the text CLIP embedded is the rewrite's final description
    assert steps["embed"]["prompts"] == [rewrite["outputs"]["description"]]
    assert run["inputs"]["modification"] == "make it red"
    assert run["inputs"]["image"] == str(ref)

    shown = cli("runs", "show", run["id"][:6])
    assert shown.exit_code == 0, shown.stderr
    for text in (caption, "Instruction: make it red", "raw answer", rewrite["outputs"]["description"], "Results"):
        assert text in shown.stdout
    listed = cli("runs", "list", "--json")
    assert [r["id"] for r in json.loads(listed.stdout)] == [run["id"]]


def test_query_table_output(cli, gallery, gallery_index, tiny_pipeline):
    res = cli("query", "-i", gallery_index, "--image", gallery / "img0002.jpg", "-t", "a blue one", "-p", tiny_pipeline, "-k", "3")
    assert res.exit_code == 0, res.stderr
    assert "run id:" in res.stdout and "Results" in res.stdout
    assert sum(line.strip().startswith("│ ") for line in res.stdout.splitlines()) == 3


def test_python_api_matches_cli_shape(tmp_path, gallery, gallery_index, tiny_pipeline):
    from cirkit.api import query

    run = query(gallery / "img0005.jpg", "same but darker", gallery_index, pipeline=tiny_pipeline, k=4, data_dir=tmp_path)
    assert len(run["results"]) == 4 and run["status"] == "ok"
    assert {s["name"] for s in run["steps"]} == {"caption", "rewrite", "embed", "search"}


def test_chat_vlm_captioner(tmp_path, tiny_models, gallery, gallery_index):
    from cirkit.api import query

    pipeline = write_pipeline(tmp_path / "qwen.yaml", tiny_models, captioner="qwen2vl", caption={"num_beams": 1})
    run = query(gallery / "img0004.jpg", "make it green", gallery_index, pipeline=pipeline, data_dir=tmp_path)
    caption_step = run["steps"][0]
    assert caption_step["model"]["model"] == str(tiny_models.qwen2vl)
    assert caption_step["outputs"]["caption"]


def test_prompt_swap_without_editing_the_pipeline(cli, tmp_path, gallery, gallery_index, tiny_pipeline):
    mine = tmp_path / "mine.yaml"
    mine.write_text(
        "name: mine\nvariables: [caption, modification]\noutput: {after: 'Target:'}\n"
        "template: 'Source: {caption}. Change: {modification}. Target:'\n"
    )
    res = cli("query", "-i", gallery_index, "--image", gallery / "img0001.jpg", "-t", "make it red",
              "-p", tiny_pipeline, "--prompt", f"rewrite={mine}", "--json")
    assert res.exit_code == 0, res.stderr
    rewrite = json.loads(res.stdout)["steps"][1]
    assert rewrite["templates"] == [{"name": "mine", "source": str(mine)}]
    assert rewrite["prompts"][0][-1]["content"].startswith("Source: ")

    res = cli("query", "-i", gallery_index, "--image", gallery / "img0001.jpg", "-t", "x", "-p", tiny_pipeline, "--prompt", "nosuchstep=cirevl-rewrite-short")
    assert res.exit_code == 1 and "nosuchstep" in res.stderr


def test_unparseable_answer_falls_back_and_is_marked(tmp_path, gallery, gallery_index, tiny_pipeline):
    from cirkit.api import query

    run = query(gallery / "img0001.jpg", "make it red", gallery_index, pipeline=tiny_pipeline, data_dir=tmp_path)
    rewrite = run["steps"][1]
    caption = run["steps"][0]["outputs"]["caption"]
    # random weights never write "Edited Description:": the fallback is used and says so
    assert rewrite["outputs"]["description"] == f"{caption} make it red"
    assert any("fallback to caption + modification" in note for note in rewrite["notes"])


def test_strict_fallback_fails_the_run_but_keeps_earlier_steps(cli, tmp_path, tiny_models, gallery, gallery_index):
    pipeline = write_pipeline(tmp_path / "strict.yaml", tiny_models, rewrite={"fallback": "error"})
    res = cli("query", "-i", gallery_index, "--image", gallery / "img0001.jpg", "-t", "make it red", "-p", pipeline)
    assert res.exit_code == 1
    assert "step 'rewrite' failed" in res.stderr and "Traceback" not in res.stderr
    run = json.loads(cli("runs", "show", json.loads(cli("runs", "list", "--json").stdout)[0]["id"], "--json").stdout)
    assert run["status"] == "failed"
    assert [(s["name"], s["status"]) for s in run["steps"]] == [("caption", "ok"), ("rewrite", "failed")]
    assert run["steps"][0]["outputs"]["caption"]
    assert run["steps"][1]["raw"]  # the answer that could not be parsed is kept


def test_model_that_fails_to_load_is_stored_as_the_step_error(cli, tmp_path, tiny_models, gallery, gallery_index):
    broken = tmp_path / "broken-llm"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    pipeline = write_pipeline(tmp_path / "p.yaml", tiny_models)
    pipeline.write_text(pipeline.read_text().replace(str(tiny_models.llm), str(broken)))
    res = cli("query", "-i", gallery_index, "--image", gallery / "img0001.jpg", "-t", "make it red", "-p", pipeline)
    assert res.exit_code == 1 and "step 'rewrite' failed" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    run = json.loads(cli("runs", "show", json.loads(cli("runs", "list", "--json").stdout)[0]["id"], "--json").stdout)
    assert run["steps"][0]["status"] == "ok" and run["steps"][1]["status"] == "failed"


@pytest.mark.parametrize(
    "case, expected",
    [
        ("corrupt", "reference image"),
        ("missing", "missing file"),
        ("empty_text", "modification text is empty"),
        ("huge_text", "characters long"),
        ("missing_index", "no gallery index"),
        ("bad_pipeline", "not valid YAML"),
        ("bad_k", "Invalid value"),
    ],
)
def test_bad_input_one_line_nonzero_nothing_stored(cli, tmp_path, gallery, gallery_index, tiny_pipeline, case, expected):
    ref, text, index, pipeline, k = gallery / "img0001.jpg", "make it red", gallery_index, tiny_pipeline, "5"
    if case == "corrupt":
        ref = tmp_path / "corrupt.jpg"
        ref.write_bytes((gallery / "img0001.jpg").read_bytes()[:200])
    elif case == "missing":
        ref = tmp_path / "nope.jpg"
    elif case == "empty_text":
        text = "   "
    elif case == "huge_text":
        text = "red " * 5000
    elif case == "missing_index":
        index = tmp_path / "no-index"
    elif case == "bad_pipeline":
        pipeline = tmp_path / "bad.yaml"
        pipeline.write_text("name: x\nsteps: [unclosed\n")
    elif case == "bad_k":
        k = "0"
    res = cli("query", "-i", index, "--image", ref, "-t", text, "-p", pipeline, "-k", k)
    assert res.exit_code != 0
    assert expected in res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    if case != "bad_k":
        assert len(res.stderr.strip().splitlines()) == 1
    assert _run_count(tmp_path) == 0


def test_query_with_another_clip_is_refused(cli, tmp_path, tiny_models, gallery, gallery_index):
    from tiny_models import build_tiny_clip

    config, checkpoint = build_tiny_clip(tmp_path / "other", name="other-tiny-clip")
    pipeline = write_pipeline(tmp_path / "p.yaml", tiny_models)
    text = pipeline.read_text().replace(str(tiny_models.clip_config), str(config)).replace(str(tiny_models.clip_checkpoint), str(checkpoint))
    pipeline.write_text(text)
    res = cli("query", "-i", gallery_index, "--image", gallery / "img0001.jpg", "-t", "make it red", "-p", pipeline)
    assert res.exit_code == 1
    assert "was built with CLIP cirkit-tiny-clip" in res.stderr and "other-tiny-clip" in res.stderr
    assert _run_count(tmp_path) == 0


def test_odd_reference_images_are_converted(tmp_path, gallery_index, tiny_pipeline):
    from cirkit.api import query

    cmyk = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(cmyk)
    run = query(cmyk, "make it blue", gallery_index, pipeline=tiny_pipeline, data_dir=tmp_path)
    assert run["status"] == "ok"


def test_long_text_is_truncated_for_clip_with_a_note(tmp_path, gallery, gallery_index, tiny_pipeline):
    from cirkit.api import query

    long_text = "make it red and " * 40 + "shiny"
    run = query(gallery / "img0001.jpg", long_text, gallery_index, pipeline=tiny_pipeline, data_dir=tmp_path)
    embed = run["steps"][2]
    assert embed["notes"] == ["text longer than CLIP's context length: truncated"]
    short = query(gallery / "img0001.jpg", "red", gallery_index, pipeline=tiny_pipeline, data_dir=tmp_path)
    assert short["steps"][2]["notes"] == []
