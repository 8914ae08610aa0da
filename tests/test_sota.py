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
    res = cli("query", "-i", index, "--image", image, "-t", text, "-p", pipeline, "--json", *extra)
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
