"""`cirevl-paper`: CIReVL as its authors run it, with their prompts imported from a file in their form
(written here, with made-up text), served through an OpenAI-compatible server."""

from __future__ import annotations

import json
import re

import pytest

from cirkit.pipelines import load_pipeline
from test_engines_remote import FakeServer, completion, last_user_text
from test_prompts_import import CIREVL_LIKE, constants_of, message_sent

AUTHORS_PROMPT = {  # which constant the authors' run scripts use per benchmark
    "cirr": "contextual_modifier_prompt",
    "circo": "structural_modifier_prompt",
    "fashioniq": "structural_modifier_prompt_fashion",
    "genecis-focus-object": "short_focus_object_modifier_prompt",
    "genecis-change-object": "short_modifier_prompt",
    "genecis-focus-attribute": "short_modifier_prompt",
    "genecis-change-attribute": "short_modifier_prompt",
    None: "simple_modifier_prompt",
}


@pytest.fixture(autouse=True)
def _no_proxy_for_localhost(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture
def imported(cli, tmp_path):
    source = tmp_path / "Vision_by_Language" / "src" / "prompts.py"
    source.parent.mkdir(parents=True)
    source.write_text(CIREVL_LIKE, encoding="utf-8")
    assert cli("prompts", "import", source, "--as", "cirevl-paper").exit_code == 0
    return tmp_path / "data"


def test_without_the_import_one_line_says_how(cli):
    res = cli("pipelines", "validate", "cirevl-paper")
    assert res.exit_code == 1
    assert "cirkit prompts import PATH/TO/prompts.py --as cirevl-paper" in res.stderr and res.stderr.count("\n") == 1
    listed = cli("pipelines", "list")
    assert listed.exit_code == 0 and "cirevl-paper" in listed.stdout and "not usable yet" in listed.stdout


@pytest.mark.parametrize("family", list(AUTHORS_PROMPT))
def test_the_authors_settings_per_benchmark(imported, family):
    p = load_pipeline("cirevl-paper", benchmark=family)
    caption, rewrite = p.step("caption"), p.step("rewrite")
    assert p.model_for(caption).id == "Salesforce/blip2-flan-t5-xxl"
    assert (caption.params.num_beams, caption.params.max_new_tokens) == (5, 30)
    assert caption.prompts[0].name == "cirevl-paper/blip_prompt"
    assert [t.name for t in rewrite.prompts] == [f"cirevl-paper/{AUTHORS_PROMPT[family]}"]
    llm = p.model_for(rewrite)
    assert (llm.engine, llm.id) == ("openai", "gpt-3.5-turbo")
    params = rewrite.params
    assert (params.temperature, params.max_new_tokens, params.stop, params.fallback) == (0, 700, ["\n\n", "<|endoftext|>"], "modification")
    clip = p.clip_model()
    assert (clip.name, clip.pretrained) == ("ViT-L-14", "laion2b_s32b_b82k")
    assert clip.preprocess == {"name": "targetpad", "pad_ratio": 1.25}
    # CIReVL averages the normalized text and reference-image vectors on GeneCIS focus-attribute only
    assert p.step("fuse").params.alpha == (0.5 if family == "genecis-focus-attribute" else 1.0)
    assert (p.overrides or {}).get("benchmark") == family


def test_a_map_without_the_benchmark_or_a_default_is_one_line(tmp_path, imported):
    from cirkit.errors import CirkitError

    text = load_pipeline("cirevl-paper").text.replace("      default: cirevl-paper/simple_modifier_prompt\n", "")
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(CirkitError, match=r"step 'rewrite': field 'prompt': the per-benchmark map has no entry for a query outside a benchmark"):
        load_pipeline(path)
    path.write_text(text.replace("      cirr:", "      nlvr:"))
    with pytest.raises(CirkitError, match="'nlvr' is not a benchmark family"):
        load_pipeline(path, benchmark="cirr")


ANSWERS = {  # modification -> the LLM's answer, and the description the authors' rule extracts
    "make it red": ("Let me think.\nEdited Description: a red bus: parked\nNote: done", "a red bus"),
    "add a hat": ("The scene changes.\n  edited description: lower case does not count\nNothing else", "add a hat"),
    "remove the cat": ("Edited Description:   \nEdited Description: a dog alone", "remove the cat"),
}


def test_through_an_openai_compatible_server_the_trace_holds_the_authors_message(cli, tmp_path, imported, tiny_models, gallery):
    from cirkit.api import Query, index_folder, query_many

    def answer(_, body):
        return completion(ANSWERS[re.search(r"Instruction: (.*)$", last_user_text(body)).group(1)][0])

    clip = {"name": str(tiny_models.clip_config), "pretrained": str(tiny_models.clip_checkpoint), "preprocess": "targetpad"}
    with FakeServer(answer) as server:
        overrides = {
            "captioner": {"id": str(tiny_models.blip2)},
            "llm": {"engine": "openai", "base_url": server.url, "id": "gpt-3.5-turbo"},
            "clip": clip,
        }
        index_folder(gallery, tmp_path / "idx", pipeline="cirevl-paper", model_overrides={"clip": clip})
        images = sorted(gallery.glob("*.jpg"))
        runs = query_many([Query(images[i], text) for i, text in enumerate(ANSWERS)], tmp_path / "idx",
                          pipeline="cirevl-paper", data_dir=imported, model_overrides=overrides)
    constants = constants_of(CIREVL_LIKE)
    assert len(server.bodies) == len(ANSWERS)
    for body in server.bodies:
        assert body["temperature"] == 0 and body["max_tokens"] == 700 and body["stop"] == ["\n\n", "<|endoftext|>"]
        assert [m["role"] for m in body["messages"]] == ["user"]
    for run, (modification, (_, expected)) in zip(runs, ANSWERS.items()):
        assert run["status"] == "ok", run["error"]
        caption = next(s for s in run["steps"] if s["name"] == "caption")["outputs"]["caption"]
        rewrite = next(s for s in run["steps"] if s["name"] == "rewrite")
        sent = message_sent(constants["simple_modifier_prompt"], caption, modification)
        assert rewrite["prompts"] == [[{"role": "user", "content": sent}]]
        assert sent in [last_user_text(b) for b in server.bodies]
        assert rewrite["outputs"]["description"] == expected
        shown = cli("runs", "show", run["id"], "--json")
        assert json.loads(shown.stdout)["steps"][1]["outputs"]["description"] == expected
