"""`--model NAME=SPEC`: one model entry replaced for one call, validated like the file, recorded in the run."""

from __future__ import annotations

import json

import pytest

from cirkit.errors import CirkitError
from cirkit.commands.common import parse_model_overrides
from cirkit.pipelines.spec import load_pipeline


def test_an_override_replaces_one_entry_and_keeps_its_type(tiny_pipeline, tiny_models):
    overrides = parse_model_overrides([f"llm={{id: {tiny_models.llm}, dtype: float32}}"])
    pipeline = load_pipeline(tiny_pipeline, model_overrides=overrides)
    llm = pipeline.models["llm"]
    assert (llm.type, llm.id, llm.dtype) == ("llm", str(tiny_models.llm), "float32")
    assert pipeline.models["captioner"].id == str(tiny_models.blip2)  # the others are untouched
    assert pipeline.overrides == {"models": overrides}
    assert pipeline.hash != load_pipeline(tiny_pipeline).hash


@pytest.mark.parametrize(
    "flag, message",
    [
        ("llm", "--model expects NAME=SPEC"),
        ("llm=", "--model expects NAME=SPEC"),
        ("llm=[a, b]", "--model llm: SPEC must be a mapping"),
        ("llm={id: [unclosed", "--model llm: not a YAML mapping"),
        ("nosuch={id: x}", "has no model 'nosuch' (its models: captioner, llm, clip)"),
        ("llm={type: clip, name: ViT-B-32}", "step 'rewrite': field 'model': 'llm' is a clip model"),
        ("clip={name: ViT-B-32, shade: blue}", "model 'clip': field 'shade': Extra inputs are not permitted"),
        ("llm={id: ./no/such/dir}", "model 'llm': 'id': no such file or directory: ./no/such/dir"),
    ],
)
def test_bad_overrides_are_one_line(tiny_pipeline, flag, message):
    with pytest.raises(CirkitError) as err:
        load_pipeline(tiny_pipeline, model_overrides=parse_model_overrides([flag]))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_same_name_twice_is_refused():
    with pytest.raises(CirkitError, match="--model names 'llm' twice"):
        parse_model_overrides(["llm={id: a}", "llm={id: b}"])


def test_an_override_runs_and_is_recorded_in_the_run(tmp_path, tiny_models, tiny_pipeline, gallery_index, gallery):
    from cirkit.api import query
    from cirkit.store import RunStore

    overrides = {"llm": {"id": str(tiny_models.llm), "dtype": "float32"}}
    run = query(next(gallery.glob("*.jpg")), "make it red", gallery_index, pipeline=tiny_pipeline,
                data_dir=tmp_path / "data", model_overrides=overrides)
    rewrite = next(s for s in run["steps"] if s["name"] == "rewrite")
    assert rewrite["model"]["dtype"] == "float32"
    store = RunStore(tmp_path / "data")
    assert store.get(run["id"]).overrides == {"models": overrides}
    store.close()


def test_cli_model_flag_on_index_and_its_errors(cli, tmp_path, tiny_models, tiny_pipeline, gallery):
    res = cli("index", gallery, "--out", tmp_path / "idx", "--pipeline", tiny_pipeline, "--model", "clip={name: ViT-B-32}")
    assert res.exit_code == 0, res.stderr
    model = json.loads((tmp_path / "idx" / "manifest.json").read_text())["model"]
    assert model["name"] == "ViT-B-32" and model["dim"] == 512  # not the pipeline's tiny CLIP
    res = cli("index", gallery, "--out", tmp_path / "idx2", "--pipeline", tiny_pipeline, "--model", "clip={name: [")
    assert res.exit_code == 1 and res.stderr.startswith("error: --model clip: not a YAML mapping")
    assert not (tmp_path / "idx2").exists()


def test_rerun_with_a_model_override_keeps_the_original_ones(cli, tmp_path, tiny_models, tiny_pipeline, gallery_index, gallery):
    from cirkit.api import query

    run = query(next(gallery.glob("*.jpg")), "make it red", gallery_index, pipeline=tiny_pipeline,
                data_dir=tmp_path / "data", model_overrides={"captioner": {"id": str(tiny_models.blip2), "dtype": "float32"}})
    res = cli("runs", "rerun", run["id"], "--from", "rewrite", "--model", f"llm={{id: {tiny_models.llm}, dtype: float32}}")
    assert res.exit_code == 0, res.stderr
    new_id = res.stdout.split("new run ")[1].split()[0]
    new = json.loads(cli("runs", "show", new_id, "--json").stdout)
    assert set(new["overrides"]["models"]) == {"captioner", "llm"}
    assert next(s for s in new["steps"] if s["name"] == "rewrite")["model"]["dtype"] == "float32"


def test_query_model_flag_locally_and_in_the_server_request(cli, tmp_path, tiny_models, tiny_pipeline, gallery_index, gallery):
    from cirkit.serve.protocol import build_request

    flag = f"llm={{id: {tiny_models.llm}, dtype: float32}}"
    image = next(gallery.glob("*.jpg"))
    res = cli("query", "--local", "-i", gallery_index, "--image", image, "-t", "make it red", "-p", tiny_pipeline,
              "--model", flag, "--json")
    assert res.exit_code == 0, res.stderr
    run = json.loads(res.stdout)
    assert run["overrides"]["models"]["llm"]["dtype"] == "float32"
    request, _ = build_request(data_dir=tmp_path, index=gallery_index, pipeline=tiny_pipeline,
                               prompts={"rewrite": ["cirevl-paper/simple_modifier_prompt"]}, models=parse_model_overrides([flag]),
                               k=5, use_cache=True, raise_on_failure=True, image=image, text="make it red")
    assert request.models == {"llm": {"id": str(tiny_models.llm), "dtype": "float32"}}
    assert request.prompts == {"rewrite": ["cirevl-paper/simple_modifier_prompt"]}  # an imported template's name stays a name
