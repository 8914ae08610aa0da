"""The 2025-26 methods as pipeline files, run end to end on tiny random-weight models.

osrcir: one-pass reasoning by a chat VLM (the tiny Qwen2-VL); imagescope: propositions from the
tiny LLM checked by the tiny yes/no judge.
"""

from __future__ import annotations

import json

import numpy as np
import pytest


def _models(tiny_models, **extra) -> list[str]:
    """--model overrides that put the tiny models into a built-in pipeline."""
    out = []
    for name, path in extra.items():
        out += ["--model", f'{name}={{id: "{path}"}}']
    out += ["--model", f'clip={{name: "{tiny_models.clip_config}", pretrained: "{tiny_models.clip_checkpoint}"}}']
    return out


def _query(cli, index, image, pipeline, *extra, text="make it red"):
    # the reference is a gallery image here; kept, so that the run's results are the last step's
    res = cli("query", "-i", index, "--image", image, "-t", text, "-p", pipeline, "--json", "--include-reference", *extra)
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)


def _show(cli, run_id):
    res = cli("runs", "show", run_id, "--json")
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)


# --- osrcir -----------------------------------------------------------------------------------------

def test_osrcir_keeps_the_reasoning_falls_back_with_a_note_and_reruns_from_an_edit(
    cli, tmp_path, tiny_models, gallery, gallery_index, engine_calls_counter
):
    models = _models(tiny_models, mllm=tiny_models.qwen2vl)
    run = _query(cli, gallery_index, gallery / "img0004.jpg", "osrcir", *models)
    stored = _show(cli, run["id"])
    reason = stored["steps"][0]
    assert [s["name"] for s in stored["steps"]] == ["reason", "embed", "search"]
    assert reason["kind"] == "reason"
    # the reference image went to the model with cirkit's template; the whole answer is kept
    assert reason["prompts"][0]["images"] == ["reference"]
    assert "Instruction: make it red" in reason["prompts"][0]["messages"][-1]["content"]
    assert reason["outputs"]["reasoning"] == reason["raw"] and reason["raw"][0].strip()
    # random weights never write "Target Description:": the modification is retrieved with, and the note says why
    assert reason["outputs"]["description"] == "make it red"
    assert any("fallback to the modification" in n and "Target Description:" in n for n in reason["notes"])
    assert stored["steps"][1]["prompts"] == ["make it red"]
    assert [m for m, _ in engine_calls_counter] == [str(tiny_models.qwen2vl)]

    # the parsed description is editable: only embed and search run again
    engine_calls_counter.clear()
    res = cli("runs", "edit", run["id"], "reason", "--text", "a red square on a white background")
    assert res.exit_code == 0, res.stderr
    new_id = json.loads(cli("runs", "list", "--json").stdout)[0]["id"]
    new = _show(cli, new_id)
    assert [(s["name"], s["origin"]) for s in new["steps"]] == [("reason", "edited"), ("embed", "ran"), ("search", "ran")]
    assert new["steps"][1]["prompts"] == ["a red square on a white background"]
    assert engine_calls_counter == []

    shown = cli("runs", "show", run["id"])
    assert shown.exit_code == 0, shown.stderr
    assert "reasoning" in shown.stdout and "fallback to the modification" in shown.stdout


def test_reason_parses_the_description_after_the_marker(tmp_path, tiny_models, gallery, gallery_index):
    """A template that ends with its marker: the model's whole answer is the description."""
    from cirkit.api import query

    (tmp_path / "reason.yaml").write_text(
        'name: reason-short\nvariables: [modification]\noutput: {after: "Target Description:"}\n'
        'template: "Change the image: {modification}. Target Description:"\n'
    )
    (tmp_path / "p.yaml").write_text(
        f"""name: reason-test
models:
  mllm: {{type: vlm, id: "{tiny_models.qwen2vl}"}}
  clip: {{type: clip, name: "{tiny_models.clip_config}", pretrained: "{tiny_models.clip_checkpoint}"}}
steps:
  - {{name: reason, kind: reason, model: mllm, prompt: ./reason.yaml, params: {{max_new_tokens: 6, n: 2, temperature: 1.0, top_p: 0.9}}}}
  - {{name: embed, kind: embed, model: clip}}
  - {{name: search, kind: search, params: {{k: 5}}}}
"""
    )
    run = query(gallery / "img0001.jpg", "make it blue", gallery_index, pipeline=tmp_path / "p.yaml", data_dir=tmp_path / "data")
    reason = run["steps"][0]
    out = reason["outputs"]
    assert len(out["descriptions"]) == 2 and out["sources"] == [{"template": "reason-short", "sample": 1}, {"template": "reason-short", "sample": 2}]
    assert out["descriptions"] == [" ".join(raw.split()) for raw in reason["raw"]]
    assert not any("fallback" in n for n in reason["notes"])
    assert len(run["steps"][1]["outputs"]["query_vectors"]) == 2


def test_reason_needs_a_vlm_and_fails_on_format_when_asked(cli, tmp_path, tiny_models, gallery, gallery_index):
    llm = cli("query", "-i", gallery_index, "--image", gallery / "img0002.jpg", "-t", "make it red", "-p", "osrcir",
              "--model", f'mllm={{type: llm, id: "{tiny_models.llm}"}}')
    assert llm.exit_code != 0
    assert "a reason step needs vlm" in llm.stderr and "Traceback" not in llm.stderr

    from cirkit.pipelines.spec import builtin_path

    pipeline = tmp_path / "osrcir-strict.yaml"

    pipeline.write_text(builtin_path("osrcir").read_text().replace("max_new_tokens: 512,", "max_new_tokens: 8, fallback: error,"))
    models = _models(tiny_models, mllm=tiny_models.qwen2vl)
    res = cli("query", "-i", gallery_index, "--image", gallery / "img0002.jpg", "-t", "make it red", "-p", pipeline, *models)
    assert res.exit_code != 0
    assert "cannot parse the target description" in res.stderr and len(res.stderr.strip().splitlines()) == 1


# --- imagescope -------------------------------------------------------------------------------------

def _small(tmp_path, name: str, **replace: str):
    """A built-in pipeline's text with shorter generations, written next to the test."""
    from cirkit.pipelines.spec import builtin_path

    text = builtin_path(name).read_text()
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / f"{name}-small.yaml"
    path.write_text(text)
    return path


def _p_yes(logprobs):
    yes, no = np.exp(logprobs["yes"]), np.exp(logprobs["no"])
    return yes / (yes + no)


@pytest.mark.parametrize(
    "answer, marker, expected",
    [
        ("1. the dress is red\n2. the dress is short\n- it has no sleeves\n", None, ["the dress is red", "the dress is short", "it has no sleeves"]),
        ("Statements:\n* A red dress.\n* a red dress.\n\n(b) \"short\"", None, ["A red dress.", "short"]),
        ("chatter Propositions: red\nshort", "Propositions:", ["red", "short"]),
        ("no marker here", "Propositions:", []),
        ("   \n", None, []),
    ],
)
def test_propositions_are_read_one_per_line(answer, marker, expected):
    from cirkit.components.propositions import parse_propositions

    assert parse_propositions(answer, marker)[0] == expected


def test_imagescope_checks_every_proposition_and_the_scores_are_the_share_that_hold(
    cli, tmp_path, tiny_models, tiny_judge, gallery, gallery_index, engine_calls_counter
):
    pipeline = _small(tmp_path, "imagescope", **{"max_new_tokens: 512": "max_new_tokens: 6", "max_new_tokens: 160": "max_new_tokens: 12"})
    models = _models(tiny_models, mllm=tiny_judge, llm=tiny_models.llm)
    run = _query(cli, gallery_index, gallery / "img0007.jpg", pipeline, *models, "-k", "20")
    steps = {s["name"]: s for s in _show(cli, run["id"])["steps"]}
    assert list(steps) == ["reason", "embed", "search", "propositions", "verify", "compare"]
    props = steps["propositions"]["outputs"]["propositions"]
    assert props and steps["propositions"]["raw"][0].strip()

    # three propositions by hand: verify and compare run again on them
    engine_calls_counter.clear()
    res = cli("runs", "edit", run["id"], "propositions", "--text", "a red square\n- a white background\n\none object only")
    assert res.exit_code == 0, res.stderr
    new_id = json.loads(cli("runs", "list", "--json").stdout)[0]["id"]
    new = _show(cli, new_id)
    steps = {s["name"]: s for s in new["steps"]}
    props = steps["propositions"]["outputs"]["propositions"]
    assert props == ["a red square", "a white background", "one object only"]
    # every (candidate, proposition) check in one call, then the 6 ordered pairs of the top 3 in one call
    assert engine_calls_counter == [(str(tiny_judge), 20 * 3), (str(tiny_judge), 6)]

    verify = steps["verify"]
    search = steps["search"]["outputs"]["results"]
    verdicts = verify["outputs"]["verdicts"]
    assert [v["path"] for v in verdicts] == [h["path"] for h in search[:20]]
    assert [c["proposition"] for v in verdicts for c in v["checks"]] == props * 20
    assert verify["raw"] == [c["answer"] for v in verdicts for c in v["checks"]]
    # golden: P(yes) from the stored first-token log-probabilities, the mean over propositions, plus retrieval
    p = np.array([[_p_yes(c["logprobs"]) for c in v["checks"]] for v in verdicts])
    assert np.allclose(p, [[c["p_yes"] for c in v["checks"]] for v in verdicts])
    assert len(np.unique(p.round(4))) > 1
    expected = np.array([h["score"] for h in search[:20]]) + 1.0 * p.mean(axis=1)
    assert np.allclose([v["score"] for v in verdicts], expected)
    order = np.argsort(-expected, kind="stable")
    assert [h["path"] for h in verify["outputs"]["results"][:20]] == [verdicts[j]["path"] for j in order]
    assert np.allclose([h["score"] for h in verify["outputs"]["results"][:20]], expected[order])

    # compare: the top 3 by win share from the stored answers (a wins P(yes), b wins 1 - P(yes))
    compare = steps["compare"]
    top3 = verify["outputs"]["results"][:3]
    wins = {h["path"]: [] for h in top3}
    for v in compare["outputs"]["verdicts"]:
        assert len(v["checks"]) == 4
        for c in v["checks"]:
            q = _p_yes(c["logprobs"])
            wins[v["path"]].append(q if c["shown"] == "first" else 1 - q)
    share = {path: np.mean(w) for path, w in wins.items()}
    ranked = sorted((h["path"] for h in top3), key=lambda path: -share[path])
    final = new["results"]
    assert [h["path"] for h in final[:3]] == ranked
    assert [h["score"] for h in final[:3]] == [h["score"] for h in top3]  # the places keep their scores
    assert [h["path"] for h in final[3:20]] == [h["path"] for h in verify["outputs"]["results"][3:20]]

    shown = cli("runs", "show", new_id)
    assert shown.exit_code == 0, shown.stderr
    assert "a white background:" in shown.stdout and "(shown first)" in shown.stdout
    report = cli("report", new_id, "--out", tmp_path / "r.html")
    assert report.exit_code == 0, report.stderr
    html = (tmp_path / "r.html").read_text()
    assert "proposition 2" in html and "one object only: " in html and "(second)" in html


def test_propositions_fall_back_to_the_description_with_a_note(tmp_path, tiny_models, tiny_judge, gallery, gallery_index):
    from cirkit.api import query

    (tmp_path / "props.yaml").write_text(
        'name: props-marker\nvariables: [description]\noutput: {after: "Propositions:"}\ntemplate: "Split into statements: {description}"\n'
    )
    (tmp_path / "p.yaml").write_text(
        f"""name: props-test
models:
  llm: {{type: llm, id: "{tiny_models.llm}"}}
  judge: {{type: vlm, id: "{tiny_judge}"}}
  clip: {{type: clip, name: "{tiny_models.clip_config}", pretrained: "{tiny_models.clip_checkpoint}"}}
steps:
  - {{name: embed, kind: embed, model: clip, inputs: {{texts: modification}}}}
  - {{name: search, kind: search, params: {{k: 5}}}}
  - {{name: propositions, kind: propositions, model: llm, prompt: ./props.yaml, inputs: {{description: modification}}, params: {{max_new_tokens: 6}}}}
  - {{name: verify, kind: verify, model: judge, prompt: verify-proposition, params: {{k: 4}}}}
"""
    )
    run = query(gallery / "img0001.jpg", "make it blue", gallery_index, pipeline=tmp_path / "p.yaml", data_dir=tmp_path / "data")
    props = run["steps"][2]
    assert props["outputs"]["propositions"] == ["make it blue"]
    assert any("fallback to the description" in n and "no 'Propositions:' in the answer" in n for n in props["notes"])
    assert [len(v["checks"]) for v in run["steps"][3]["outputs"]["verdicts"]] == [1, 1, 1, 1]


# --- image editing: edit_image, image-to-image search, merge ---------------------------------------

@pytest.fixture(scope="module")
def tiny_editor(tmp_path_factory):
    pytest.importorskip("diffusers", reason="the diffusers engine needs diffusers (pip install -e '.[dev]')")
    from tiny_diffusers import build_tiny_instruct_pix2pix

    return build_tiny_instruct_pix2pix(tmp_path_factory.mktemp("models") / "ip2p")


def _edit_pipeline(tmp_path, tiny_models, editor, method="rrf"):
    path = tmp_path / "edit.yaml"
    path.write_text(
        f"""name: edit-test
models:
  editor: {{type: image_editor, id: "{editor}"}}
  clip: {{type: clip, name: "{tiny_models.clip_config}", pretrained: "{tiny_models.clip_checkpoint}"}}
steps:
  - {{name: edit, kind: edit_image, model: editor, params: {{steps: 2, size: 32, seed: 3}}}}
  - {{name: embed_edited, kind: embed_image, model: clip, inputs: {{image: edit.edited_image}}}}
  - {{name: search_image, kind: search, inputs: {{query_vectors: embed_edited.image_vectors}}, params: {{k: 10}}}}
  - {{name: embed_text, kind: embed, model: clip, inputs: {{texts: modification}}}}
  - {{name: search_text, kind: search, inputs: {{query_vectors: embed_text.query_vectors}}, params: {{k: 10}}}}
  - {{name: merge, kind: merge, inputs: {{a: search_text.results, b: search_image.results}}, params: {{method: {method}, k: 10}}}}
"""
    )
    return path


def test_edited_image_is_stored_searched_with_and_merged_with_the_text_path(cli, tmp_path, tiny_models, tiny_editor, gallery, gallery_index):
    import hashlib

    from cirkit.images import load_image

    path = _edit_pipeline(tmp_path, tiny_models, tiny_editor)
    run = _query(cli, gallery_index, gallery / "img0005.jpg", path, "-k", "10")
    steps = {s["name"]: s for s in _show(cli, run["id"])["steps"]}
    ref = steps["edit"]["outputs"]["edited_image"]
    stored = tmp_path / "data" / "images" / ref["sha256"][:2] / f"{ref['sha256']}.png"
    assert ref["image_file"] == str(stored) and hashlib.sha256(stored.read_bytes()).hexdigest() == ref["sha256"]
    assert load_image(stored).size == (32, 24)  # 40x32 scaled to 32 on the long side, sides multiples of 8
    assert steps["edit"]["model"]["engine"] == "diffusers" and steps["edit"]["model"]["pipeline"] == "StableDiffusionInstructPix2PixPipeline"
    assert steps["edit"]["prompts"] == [{"images": ["reference"], "prompt": "make it red"}]

    # the image path searched with the CLIP vector of the stored image
    from cirkit.engines.open_clip_engine import ClipModel

    clip = ClipModel(str(tiny_models.clip_config), str(tiny_models.clip_checkpoint))
    vector = clip.encode_images(clip.preprocess(load_image(stored))[None])[0]
    assert np.allclose(steps["embed_edited"]["outputs"]["image_vectors"][0], vector, atol=1e-5)

    # golden: reciprocal-rank fusion of the two lists
    a, b = steps["search_text"]["outputs"]["results"], steps["search_image"]["outputs"]["results"]
    fused = {}
    for hits in (a, b):
        for hit in hits:
            fused[hit["path"]] = fused.get(hit["path"], 0.0) + 1.0 / (60.0 + hit["rank"])
    merged = run["results"]
    assert [h["path"] for h in merged] == sorted(fused, key=lambda p: -fused[p])[:10]
    assert np.allclose([h["score"] for h in merged], [fused[h["path"]] for h in merged])

    # the same query again: the edit comes from the cache, the same file
    again = _query(cli, gallery_index, gallery / "img0005.jpg", path, "-k", "10")
    steps_again = {s["name"]: s for s in _show(cli, again["id"])["steps"]}
    assert steps_again["edit"]["origin"] == "cache" and steps_again["edit"]["outputs"]["edited_image"] == ref
    assert [h["path"] for h in again["results"]] == [h["path"] for h in merged]

    shown = cli("runs", "show", run["id"])
    assert shown.exit_code == 0 and ref["sha256"][:12] in shown.stdout.replace("\n", "")


def test_score_merge_is_the_weighted_sum():
    from cirkit.components.merge import MergeParams, merge

    a = [{"path": "x", "rank": 1, "score": 0.9}, {"path": "y", "rank": 2, "score": 0.5}]
    b = [{"path": "y", "rank": 1, "score": 0.8}, {"path": "z", "rank": 2, "score": 0.2}]
    out = merge(a, b, MergeParams(method="score", weight=0.25))
    expected = {"x": 0.25 * 0.9 + 0.75 * 0.2, "y": 0.25 * 0.5 + 0.75 * 0.8, "z": 0.25 * 0.5 + 0.75 * 0.2}
    assert [h["path"] for h in out] == sorted(expected, key=lambda p: -expected[p])
    assert [h["score"] for h in out] == pytest.approx([expected[h["path"]] for h in out])
    assert out[0]["paths"] == {"a": {"rank": 2, "score": 0.5}, "b": {"rank": 1, "score": 0.8}}


def test_an_editing_model_that_cannot_load_is_one_line_and_the_run_is_stored(cli, tmp_path, tiny_models, gallery, gallery_index):
    pytest.importorskip("diffusers")
    path = _edit_pipeline(tmp_path, tiny_models, tiny_models.llm)
    res = cli("query", "-i", gallery_index, "--image", gallery / "img0005.jpg", "-t", "make it red", "-p", path)
    assert res.exit_code != 0
    assert "cannot load image-editing model" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    listed = json.loads(cli("runs", "list", "--json").stdout)
    assert listed and listed[0]["status"] == "failed"
    (tmp_path / "wrong.yaml").write_text(path.read_text().replace("type: image_editor", "type: vlm"))
    wrong = cli("pipelines", "validate", tmp_path / "wrong.yaml")
    assert wrong.exit_code != 0 and "a edit_image step needs image_editor" in wrong.stderr


# --- square: the grid rerank ------------------------------------------------------------------------

@pytest.mark.parametrize(
    "answer, count, expected",
    [
        ("3, 1, 2", 9, [2, 0, 1]),
        ("Best: cell 7, then 7 again, then 10 and 2.5 and 4.", 9, [6, 3]),
        ("[9] > [1]", 9, [8, 0]),
        ("none of them", 9, []),
        ("0, 12", 9, []),
    ],
)
def test_grid_answers_are_read_as_cell_numbers(answer, count, expected):
    from cirkit.components.grid import parse_cells

    assert parse_cells(answer, count) == expected


def test_square_judges_one_grid_per_query_and_keeps_the_order_when_no_cell_is_named(
    cli, tmp_path, tiny_models, gallery, gallery_index, engine_calls_counter
):
    from cirkit.images import load_image

    pipeline = _small(tmp_path, "square", **{"max_new_tokens: 512": "max_new_tokens: 6", "cell: 224, max_new_tokens: 64": "cell: 32, max_new_tokens: 6"})
    models = _models(tiny_models, mllm=tiny_models.qwen2vl)
    run = _query(cli, gallery_index, gallery / "img0002.jpg", pipeline, *models, "-k", "20")
    steps = {s["name"]: s for s in _show(cli, run["id"])["steps"]}
    grid = steps["grid"]
    assert grid["prompts"][0]["images"] == ["reference", "grid of 9"]
    assert "a grid of 9 candidate images" in grid["prompts"][0]["messages"][-1]["content"]
    assert load_image(grid["outputs"]["grid"]["image_file"]).size == (96, 96)
    # the tiny model writes words, no cell numbers: the retrieval order stays, and the notes say why
    assert any("names no cell 1..9" in n and "kept the retrieval order" in n for n in grid["notes"])
    search = steps["search"]["outputs"]["results"]
    assert [h["path"] for h in run["results"]] == [h["path"] for h in search[: len(run["results"])]]
    assert [v["cell"] for v in grid["outputs"]["verdicts"]] == list(range(1, 10))
    # one MLLM call for the reasoning and one for the grid
    assert engine_calls_counter == [(str(tiny_models.qwen2vl), 1), (str(tiny_models.qwen2vl), 1)]

    strict = _small(tmp_path, "square", **{"max_new_tokens: 512": "max_new_tokens: 6", "cell: 224, max_new_tokens: 64": "cell: 32, max_new_tokens: 6, fallback: error"})
    res = cli("query", "-i", gallery_index, "--image", gallery / "img0002.jpg", "-t", "make it red", "-p", strict, *models)
    assert res.exit_code != 0
    assert "names no cell 1..9" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    failed = _show(cli, json.loads(cli("runs", "list", "--json").stdout)[0]["id"])
    assert failed["status"] == "failed" and [s["status"] for s in failed["steps"]] == ["ok"] * 5 + ["failed"]


# --- wiser: two paths, a verifier, a critic-refine loop per uncertain path, fusion by summed P(yes) ---

@pytest.fixture(scope="module")
def wiser_setup(tiny_models, tiny_judge, tiny_editor, gallery, tmp_path_factory):
    """The `wiser` built-in on the tiny models, over an index with gallery captions (the critic reads them)."""
    from cirkit.api import index_folder
    from cirkit.engines import ModelPool
    from cirkit.pipelines import load_pipeline
    from cirkit.pipelines.gallery_captions import caption_gallery

    root = tmp_path_factory.mktemp("wiser")
    pipeline = _small(root, "wiser", **{
        "max_new_tokens: 30,": "max_new_tokens: 6,",
        "steps: 50, true_cfg_scale: 4.0, size: 1024,": "steps: 2, true_cfg_scale: 4.0, size: 32,",
        "max_new_tokens: 1000,": "max_new_tokens: 8,",
        "max_new_tokens: 256,": "max_new_tokens: 8,",
        # every path uncertain, so both loops run
        "while: text_confidence <= 0.7": "while: text_confidence <= 1.5",
        "while: image_confidence <= 0.7": "while: image_confidence <= 1.5",
    })
    overrides = {
        "captioner": {"id": str(tiny_models.blip2), "dtype": "float32"},
        "llm": {"id": str(tiny_models.llm), "dtype": "float32"},
        "critic": {"id": str(tiny_models.llm), "dtype": "float32"},
        "editor": {"id": str(tiny_editor)},
        "verifier": {"id": str(tiny_judge), "dtype": "float32"},
        "clip": {"name": str(tiny_models.clip_config), "pretrained": str(tiny_models.clip_checkpoint)},
    }
    index = root / "idx"
    index_folder(gallery, index, pipeline=pipeline, model_overrides=overrides)
    caption_gallery(index, load_pipeline(pipeline, model_overrides=overrides), ModelPool(), progress=False)
    return pipeline, index, [a for name, entry in overrides.items() for a in ("--model", f"{name}={json.dumps(entry)}")]


def test_wiser_judges_both_paths_refines_uncertain_ones_and_fuses_by_summed_p_yes(cli, gallery, wiser_setup, tmp_path):
    from html import escape

    pipeline, index, models = wiser_setup
    run = _query(cli, index, gallery / "img0004.jpg", pipeline, *models, "-k", "100")
    stored = _show(cli, run["id"])
    assert [(s["name"], s["status"]) for s in stored["steps"]] == [(name, "ok") for name in (
        "caption", "rewrite", "embed_text", "search_text", "verify_text", "edit", "embed_edit", "search_image", "verify_image",
        "critique_text", "rewrite_again", "embed_text_again", "search_text_again", "verify_text_again",
        "critique_image", "edit_again", "embed_edit_again", "search_image_again", "verify_image_again", "fuse")]
    steps = {s["name"]: s for s in stored["steps"]}
    caption = steps["caption"]["outputs"]["caption"]

    # the verifier sees the reference and each of a path's top 50 (the whole 30-image gallery here)
    verify = steps["verify_text"]
    assert verify["prompts"][0]["images"] == ["reference", "candidate"] and len(verify["outputs"]["verdicts"]) == 30
    assert 'Requested change to image 1: "make it red"' in verify["prompts"][0]["messages"][-1]["content"]
    # the path's list in order of P(yes), its confidence the best one
    p_yes = [h["verifier"] for h in verify["outputs"]["results"]]
    assert p_yes == sorted(p_yes, reverse=True) and verify["outputs"]["confidence"] == p_yes[0]

    # the critic read the reference caption, the modification and the gallery caption of the path's best candidate
    critique = steps["critique_text"]
    best = verify["outputs"]["results"][0]["path"]
    assert len(critique["outputs"]["documents"]) == 1 and critique["outputs"]["documents"][0] in critique["prompts"][0][-1]["content"]
    assert caption in critique["prompts"][0][-1]["content"] and "make it red" in critique["prompts"][0][-1]["content"]
    assert steps["verify_text"]["outputs"]["results"][0]["path"] == best
    # the caption was made again from the original one, the instruction amended by the advice
    advice = critique["outputs"]["description"]
    assert advice and f"Instruction: make it red and {advice}." in steps["rewrite_again"]["prompts"][0][-1]["content"]
    assert f"Image Content: {caption}" in steps["rewrite_again"]["prompts"][0][-1]["content"]
    # the image path: the original reference edited again with the amended text
    image_advice = steps["critique_image"]["outputs"]["description"]
    assert steps["edit_again"]["prompts"] == [{"images": ["reference"], "prompt": f"make it red and {image_advice}."}]
    # each loop ended at its bound of one round, and said so
    assert steps["verify_text_again"]["notes"][-1].startswith("loop ends at its bound, 1 round(s): text_confidence = ")
    assert steps["verify_image_again"]["notes"][-1].startswith("loop ends at its bound, 1 round(s): image_confidence = ")

    # golden: the fused ranking is the sum of the refined paths' P(yes), 0 where a path missed the image,
    # ties to the higher single P(yes), then the text path's, then the name
    text = {h["path"]: h["verifier"] or 0.0 for h in steps["verify_text_again"]["outputs"]["results"]}
    image = {h["path"]: h["verifier"] or 0.0 for h in steps["verify_image_again"]["outputs"]["results"]}
    pool = set(text) | set(image)
    expected = sorted(pool, key=lambda p: (-(text.get(p, 0.0) + image.get(p, 0.0)), -max(text.get(p, 0.0), image.get(p, 0.0)), -text.get(p, 0.0), p))
    assert [h["path"] for h in run["results"]] == expected
    assert [h["score"] for h in run["results"]] == pytest.approx([text.get(p, 0.0) + image.get(p, 0.0) for p in expected])

    # the report shows both edited images, every round of each loop, the critic's advice and the verdicts
    page = tmp_path / "wiser.html"
    res = cli("report", run["id"], "--out", page, "-k", "5")
    assert res.exit_code == 0, res.stderr
    html = page.read_text()
    assert html.count("data-output='edited_image'><img src='data:image/jpeg;base64,") == 2
    assert "data-step='verify_text_again' data-round='0'" in html and "loop ends at its bound" in html
    assert html.count("data-verifier=") == 5 and escape(advice) in html


def test_wiser_leaves_confident_paths_alone(cli, gallery, wiser_setup, tmp_path):
    pipeline, index, models = wiser_setup
    sure = tmp_path / "wiser-sure.yaml"
    sure.write_text(pipeline.read_text().replace("<= 1.5", "<= -1"))
    run = _query(cli, index, gallery / "img0004.jpg", sure, *models, "-k", "100")
    stored = _show(cli, run["id"])
    assert [(s["name"], s["status"]) for s in stored["steps"]][9:] == [
        ("critique_text", "skipped"), ("critique_image", "skipped"), ("fuse", "ok")]
    assert stored["steps"][9]["notes"][0].startswith("loop not entered: text_confidence = ")
    steps = {s["name"]: s for s in stored["steps"]}
    text = {h["path"]: h["verifier"] for h in steps["verify_text"]["outputs"]["results"]}
    image = {h["path"]: h["verifier"] for h in steps["verify_image"]["outputs"]["results"]}
    assert [h["score"] for h in run["results"]] == pytest.approx([text[h["path"]] + image[h["path"]] for h in run["results"]])


def test_an_edited_image_is_replaced_by_hand_and_what_follows_runs_again(cli, tmp_path, tiny_models, tiny_editor, gallery, gallery_index):
    from PIL import Image

    path = _edit_pipeline(tmp_path, tiny_models, tiny_editor)
    run = _query(cli, gallery_index, gallery / "img0005.jpg", path, "-k", "10")
    mine = tmp_path / "mine.png"
    Image.new("RGB", (20, 16), (250, 10, 10)).save(mine)
    res = cli("runs", "edit", run["id"], "edit", "--file", mine)
    assert res.exit_code == 0, res.stderr
    new = _show(cli, json.loads(cli("runs", "list", "--json").stdout)[0]["id"])
    steps = {s["name"]: s for s in new["steps"]}
    assert steps["edit"]["origin"] == "edited" and steps["embed_edited"]["origin"] == "ran"
    from cirkit.engines.open_clip_engine import ClipModel
    from cirkit.images import load_image

    stored = steps["edit"]["outputs"]["edited_image"]["image_file"]
    assert load_image(stored).tobytes() == load_image(mine).tobytes()
    clip = ClipModel(str(tiny_models.clip_config), str(tiny_models.clip_checkpoint))
    assert np.allclose(steps["embed_edited"]["outputs"]["image_vectors"][0], clip.encode_images(clip.preprocess(load_image(mine))[None])[0], atol=1e-5)
    assert new["change"]["edited"] == "edit" and new["change"]["image"] == stored

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    before = json.loads(cli("runs", "list", "--json").stdout)
    res = cli("runs", "edit", run["id"], "edit", "--file", broken)
    assert res.exit_code != 0 and "broken.png" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert json.loads(cli("runs", "list", "--json").stdout) == before
