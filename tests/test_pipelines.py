"""Pipeline files and prompt templates: validation before any model loads, errors that say where."""

from __future__ import annotations

import textwrap

import pytest

from cirkit.errors import CirkitError
from cirkit.pipelines import builtin_names, load_pipeline
from cirkit.prompts import builtin_names as prompt_names
from cirkit.prompts import load_prompt

GOOD = """\
name: mine
models:
  vlm: {type: vlm, id: Salesforce/blip2-flan-t5-xl}
  llm: {type: llm, id: Qwen/Qwen2.5-7B-Instruct}
  clip: {type: clip, name: ViT-B-32, pretrained: openai}
steps:
  - {name: caption, kind: caption, model: vlm, prompt: cirevl-caption, params: {num_beams: 5}}
  - {name: rewrite, kind: rewrite, model: llm, prompt: cirevl-rewrite}
  - {name: embed, kind: embed, model: clip}
  - {name: search, kind: search, params: {k: 10}}
"""


def _write(tmp_path, text, name="p.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_builtin_cirevl_is_the_method_shape_with_cirkits_own_prompts():
    p = load_pipeline("cirevl")
    assert [s.kind for s in p.steps] == ["caption", "rewrite", "embed", "search"]
    caption, rewrite = p.steps[0], p.steps[1]
    assert p.model_for(caption).id == "Salesforce/blip2-flan-t5-xl"
    assert caption.params.num_beams == 5 and caption.params.max_new_tokens == 30
    assert "cirkit's own" in caption.prompts[0].spec.description and "cirkit's own" in rewrite.prompts[0].spec.description
    assert "cirevl-paper" in p.text  # the file says where the paper's setup is
    assert rewrite.params.temperature == 0
    assert rewrite.prompts[0].spec.output.after == "Edited Description:"
    user = rewrite.prompts[0].render(caption="a dog", modification="make it red")[-1]["content"]
    assert user.endswith("\nImage Content: a dog\nInstruction: make it red")
    clip = p.clip_model()
    assert (clip.name, clip.pretrained) == ("ViT-L-14", "openai")


def test_every_builtin_validates(tmp_path, monkeypatch):
    from cirkit.prompts.importer import import_prompts
    from test_prompts_import import CIREVL_LIKE

    monkeypatch.setenv("CIRKIT_DATA_DIR", str(tmp_path))
    (tmp_path / "prompts.py").write_text(CIREVL_LIKE)
    import_prompts(tmp_path / "prompts.py", "cirevl-paper")  # cirevl-paper uses the authors' prompts, imported
    assert "cirevl" in builtin_names()
    for name in builtin_names():
        load_pipeline(name)
    for name in prompt_names():
        load_prompt(name)
    assert {"cirevl-rewrite", "cirevl-rewrite-short", "cirevl-rewrite-simple", "cirevl-rewrite-fashion"} <= set(prompt_names())


def test_good_file_validates(tmp_path):
    p = load_pipeline(_write(tmp_path, GOOD))
    assert p.name == "mine" and p.steps[3].params.k == 10


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("kind: embed,", "kind: embedd,", "step 'embed': field 'kind': unknown component kind 'embedd'"),
        ("model: llm, prompt", "model: lm, prompt", "step 'rewrite': field 'model': unknown model reference 'lm'"),
        ("params: {k: 10}", "params: {k: ten}", "step 'search': field 'params.k': Input should be a valid integer"),
        ("params: {num_beams: 5}", "params: {num_beams: 5, beam: 2}", "step 'caption': field 'params.beam': Extra inputs are not permitted"),
        ("model: clip}", "model: llm}", "step 'embed': field 'model': 'llm' is a llm model; a embed step needs clip"),
        ("prompt: cirevl-rewrite}", "prompt: no-such-template}", "step 'rewrite': field 'prompt': unknown prompt 'no-such-template'"),
        ("type: clip,", "type: klip,", "model 'clip': field 'type'"),
        ("{name: search, kind: search, params: {k: 10}}", "{name: search, kind: search, inputs: {vector: nothing}}", "step 'search': field 'inputs'"),
        ("{name: embed, kind: embed, model: clip}", "{name: embed, kind: embed, model: clip, inputs: {texts: later}}", "field 'inputs.texts': no earlier step produces 'later'"),
        ("{name: embed,", "{name: caption,", "field 'name': another step has the same name"),
    ],
)
def test_validation_errors_name_file_step_and_field(tmp_path, old, new, message):
    assert old in GOOD
    path = _write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(CirkitError) as err:
        load_pipeline(path)
    assert str(err.value).startswith(str(path))
    assert message in str(err.value)


def test_prompt_variable_the_step_does_not_provide(tmp_path):
    _write(tmp_path, "name: needs-target\nvariables: [caption, target]\ntemplate: '{caption} {target}'\n", "t.yaml")
    path = _write(tmp_path, GOOD.replace("prompt: cirevl-rewrite", "prompt: ./t.yaml"))
    with pytest.raises(CirkitError, match=r"step 'rewrite': field 'prompt': template 'needs-target' uses variable\(s\) target that a rewrite step does not provide"):
        load_pipeline(path)


def test_validation_loads_no_model(tmp_path, monkeypatch):
    import cirkit.engines as engines

    monkeypatch.setattr(engines, "load_model", lambda spec: pytest.fail("a model was loaded"))
    load_pipeline(_write(tmp_path, GOOD))


def test_local_model_paths_resolve_relative_to_the_file(tmp_path):
    (tmp_path / "models" / "llm").mkdir(parents=True)
    path = _write(tmp_path, GOOD.replace("id: Qwen/Qwen2.5-7B-Instruct", "id: ./models/llm"))
    assert load_pipeline(path).models["llm"].id == str(tmp_path / "models" / "llm")
    missing = _write(tmp_path, GOOD.replace("id: Qwen/Qwen2.5-7B-Instruct", "id: ./models/nope"), "q.yaml")
    with pytest.raises(CirkitError, match=r"model 'llm': 'id': no such file or directory: ./models/nope"):
        load_pipeline(missing)


@pytest.mark.parametrize(
    "text, message",
    [
        ("name: x\nsteps: [\n", "not valid YAML"),
        ("- just\n- a list\n", "must be a mapping"),
        ("name: x\nmodels: {}\n", "field 'steps': Field required"),
        ("name: x\nsteps: []\n", "the pipeline has no steps"),
    ],
)
def test_malformed_pipeline_files(tmp_path, text, message):
    with pytest.raises(CirkitError, match=message):
        load_pipeline(_write(tmp_path, text))


@pytest.mark.parametrize(
    "text, message",
    [
        ("name: t\nvariables: [caption]\ntemplate: 'a {caption} {modification}'\n", r"undeclared variable\(s\) \['modification'\]"),
        ("name: t\nvariables: [caption, extra]\ntemplate: 'a {caption}'\n", r"declared variable\(s\) \['extra'\] never used"),
        ("name: t\nvariables: []\ntemplate: 'a {unclosed'\n", "bad template text"),
        ("name: t\ntemplate: [1, 2]\n", "field 'template'"),
        ("template: hi\n", "field 'name'"),
        ("name: t\ntemplate: hi\ncolour: red\n", "field 'colour': Extra inputs are not permitted"),
        (": : :\n", "not valid YAML"),
    ],
)
def test_malformed_prompt_files(tmp_path, text, message):
    path = _write(tmp_path, text, "t.yaml")
    with pytest.raises(CirkitError, match=message) as err:
        load_prompt(path)
    assert str(err.value).startswith(str(path))


def test_rendering_keeps_braces_in_values():
    messages = load_prompt("cirevl-rewrite-simple").render(caption="a {weird} caption", modification="make it {red}")
    assert "Image Content: a {weird} caption\nInstruction: make it {red}" in messages[-1]["content"]


def test_cli_pipelines_and_prompts_commands(cli, tmp_path):
    res = cli("pipelines", "list")
    assert res.exit_code == 0 and "cirevl" in res.stdout
    res = cli("pipelines", "show", "cirevl")
    assert res.exit_code == 0 and "Salesforce/blip2-flan-t5-xl" in res.stdout
    res = cli("pipelines", "validate", _write(tmp_path, GOOD))
    assert res.exit_code == 0 and res.stdout.startswith("ok:")
    bad = _write(tmp_path, GOOD.replace("kind: embed,", "kind: embedd,"), "bad.yaml")
    res = cli("pipelines", "validate", bad)
    assert res.exit_code == 1 and "unknown component kind 'embedd'" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    res = cli("pipelines", "validate", tmp_path / "missing.yaml")
    assert res.exit_code == 1 and "pipeline not found" in res.stderr
    res = cli("prompts", "list")
    assert res.exit_code == 0 and "cirevl-rewrite-short" in res.stdout
    res = cli("prompts", "show", "cirevl-rewrite")
    assert res.exit_code == 0 and "Edited Description:" in res.stdout
    res = cli("prompts", "show", "nope")
    assert res.exit_code == 1 and "unknown prompt 'nope'" in res.stderr
