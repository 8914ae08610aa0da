"""`cirkit prompts import`: a method's prompt file becomes templates, rendered exactly as its code sends them."""

from __future__ import annotations

import json
import textwrap

import pytest

from cirkit.components.rewrite import first_line_answer
from cirkit.prompts import load_prompt

# A prompts.py in the form of CIReVL's (module constants with the same names); the text is made up here.
CIREVL_LIKE = textwrap.dedent(
    '''\
    import os

    ###### made-up prompts in the form of the method's file ######
    short_modifier_prompt = """
    Rewrite the scene after the change. Begin with “Edited Description:”."""

    short_focus_object_modifier_prompt = """
    Keep only the named object. Example {"object": "cup"}:

    Image Content: a cup on a desk.
    Instruction: cup
    Edited Description: cup, desk.
    """

    simple_modifier_prompt = ("Say the new scene in few words. "
                              "Start with 'Edited Description:'.")

    contextual_modifier_prompt = \'\'\'
    Think about it, then answer on a line of its own: Edited Description: ...\'\'\'

    structural_modifier_prompt = "Structure: {scene} -> {edit}\\n" "Edited Description: <text>"

    blip_prompt = 'Tell me everything in this picture'

    structural_modifier_prompt_fashion: str = """
    A garment and a change; answer with Edited Description: and the garment after it.
    """

    PROJECT = os.path.join("a", "b")
    VERSION = 3
    dynamic_prompt = f"built at {PROJECT}"
    '''
)

NAMES = {
    "short_modifier_prompt",
    "short_focus_object_modifier_prompt",
    "simple_modifier_prompt",
    "contextual_modifier_prompt",
    "structural_modifier_prompt",
    "blip_prompt",
    "structural_modifier_prompt_fashion",
}


def constants_of(source: str) -> dict[str, str]:
    """The string constants, as the method's own code would see them."""
    scope: dict = {}
    exec(compile(source, "prompts.py", "exec"), scope)
    return {k: v for k, v in scope.items() if k in NAMES}


def message_sent(base_prompt: str, caption: str, modification: str) -> str:
    return base_prompt + "\n" + "Image Content: " + caption + "\n" + "Instruction: " + modification


@pytest.fixture
def prompts_py(tmp_path):
    path = tmp_path / "src" / "prompts.py"
    path.parent.mkdir()
    path.write_text(CIREVL_LIKE, encoding="utf-8")
    return path


def test_import_renders_exactly_the_message_the_method_sends(cli, prompts_py, tmp_path):
    result = cli("prompts", "import", prompts_py, "--as", "cirevl-paper")
    assert result.exit_code == 0, result.stderr
    assert "recognised CIReVL" in result.stdout
    data = tmp_path / "data"
    written = sorted(p.stem for p in (data / "prompts" / "cirevl-paper").glob("*.yaml"))
    assert written == sorted(NAMES)  # and neither PROJECT, VERSION nor the f-string
    assert "dynamic_prompt" in result.stdout and "f-string" in result.stdout

    caption = "a dog {sitting} on a “sofa”: brown"
    modification = "make it {red} and 50% bigger"
    for constant, text in constants_of(CIREVL_LIKE).items():
        prompt = load_prompt(f"cirevl-paper/{constant}", data_dir=data)
        assert prompt.spec.imported.constant == constant
        if constant == "blip_prompt":
            assert prompt.variables == []
            assert prompt.render() == [{"role": "user", "content": text}]
            continue
        assert prompt.variables == ["caption", "modification"]
        assert prompt.render(caption=caption, modification=modification) == [
            {"role": "user", "content": message_sent(text, caption, modification)}
        ]
        assert prompt.spec.output.first_line == "Edited Description:" and prompt.spec.output.until == ":"
        assert prompt.spec.suggested_params == {
            "temperature": 0, "max_new_tokens": 700, "stop": ["\n\n", "<|endoftext|>"], "fallback": "modification",
        }


def test_imported_templates_are_listed_shown_and_used_by_pipelines(cli, prompts_py, tmp_path):
    assert cli("prompts", "import", prompts_py, "--as", "cirevl-paper").exit_code == 0
    listed = cli("prompts", "list")
    assert listed.exit_code == 0
    assert "cirevl-paper/contextual_modifier_prompt" in listed.stdout
    assert "imported from" in listed.stdout and "prompts.py" in listed.stdout
    assert "cirevl-rewrite" in listed.stdout  # built-ins still there

    shown = cli("prompts", "show", "cirevl-paper/simple_modifier_prompt")
    assert shown.exit_code == 0, shown.stderr
    assert "Say the new scene in few words" in shown.stdout and "first line starting with" in shown.stdout

    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        "name: p\nmodels:\n  vlm: {type: vlm, id: Salesforce/blip2-flan-t5-xl}\n"
        "  llm: {type: llm, id: Qwen/Qwen2.5-0.5B-Instruct}\n  clip: {type: clip, name: ViT-B-32}\nsteps:\n"
        "  - {name: caption, kind: caption, model: vlm, prompt: cirevl-paper/blip_prompt}\n  - {name: rewrite, kind: rewrite, model: llm, prompt: cirevl-paper/short_modifier_prompt,"
        " params: {fallback: modification, stop: [\"\\n\\n\"]}}\n  - {name: embed, kind: embed, model: clip}\n"
    )
    ok = cli("pipelines", "validate", pipeline)
    assert ok.exit_code == 0, ok.stderr


def test_txt_json_and_yaml_files(cli, tmp_path):
    data = tmp_path / "data"
    txt = tmp_path / "terse.txt"
    txt.write_text("Caption: {caption}\nChange: {modification}\nNew caption:", encoding="utf-8")
    assert cli("prompts", "import", txt, "--as", "mine").exit_code == 0
    p = load_prompt("mine/terse", data_dir=data)
    assert p.variables == ["caption", "modification"]  # plain {name} fields stay variables
    assert p.render(caption="c", modification="m")[0]["content"] == "Caption: c\nChange: m\nNew caption:"

    js = tmp_path / "p.json"
    js.write_text(json.dumps({"a": "literal {\"json\": 1} braces", "b": 3}), encoding="utf-8")
    result = cli("prompts", "import", js, "--as", "js")
    assert result.exit_code == 0 and "skipped 'b'" in result.stdout
    assert load_prompt("js/a", data_dir=data).render()[0]["content"] == 'literal {"json": 1} braces'

    ym = tmp_path / "p.yaml"
    ym.write_text("first: |\n  line one\n  line two\nsecond: plain\n", encoding="utf-8")
    assert cli("prompts", "import", ym, "--as", "ym").exit_code == 0
    assert load_prompt("ym/first", data_dir=data).render()[0]["content"] == "line one\nline two\n"
    assert load_prompt("ym/second", data_dir=data).render()[0]["content"] == "plain"


def test_name_clash_is_refused_unless_forced(cli, prompts_py, tmp_path):
    assert cli("prompts", "import", prompts_py, "--as", "paper").exit_code == 0
    again = cli("prompts", "import", prompts_py, "--as", "paper")
    assert again.exit_code != 0 and "already exist" in again.stderr and "--force" in again.stderr
    builtin = cli("prompts", "import", prompts_py, "--as", "cirevl-rewrite")
    assert builtin.exit_code != 0 and "built-in" in builtin.stderr

    smaller = tmp_path / "small.py"
    smaller.write_text('only_one = "Just this."\n')
    forced = cli("prompts", "import", smaller, "--as", "paper", "--force")
    assert forced.exit_code == 0, forced.stderr
    assert sorted(p.stem for p in (tmp_path / "data" / "prompts" / "paper").glob("*.yaml")) == ["only_one"]


@pytest.mark.parametrize(
    "content, suffix, name, message",
    [
        ("x = 1\ny = f'{x}'\n", ".py", "ok", "no prompt strings"),
        ("def broken(:\n", ".py", "ok", "not valid Python (line 1"),
        ("", ".txt", "ok", "no prompt strings"),
        ("[1, 2]", ".json", "ok", "expected a mapping"),
        ("{bad json", ".json", "ok", "not valid JSON"),
        ('a = "x"\n', ".py", "../escape", "bad name '../escape'"),
        ('a = "x"\n', ".py", "has space", "bad name"),
        ('a = "x"\n', ".py", "a/b", "bad name"),
        ('a = "x"\n', ".md", "ok", "cannot import a '.md' file"),
    ],
)
def test_bad_input_is_one_clear_line(cli, tmp_path, content, suffix, name, message):
    path = tmp_path / f"prompts{suffix}"
    path.write_text(content, encoding="utf-8")
    result = cli("prompts", "import", path, "--as", name)
    assert result.exit_code != 0
    assert message in result.stderr and "Traceback" not in result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "data" / "prompts" / name).exists() or name == "ok"


def test_missing_file(cli, tmp_path):
    result = cli("prompts", "import", tmp_path / "nope.py", "--as", "x")
    assert result.exit_code != 0 and "prompt file not found" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_imported_names_do_not_shadow_files_or_builtins(tmp_path):
    from cirkit.errors import CirkitError

    assert load_prompt("cirevl-rewrite", data_dir=tmp_path).source == "builtin:cirevl-rewrite"
    with pytest.raises(CirkitError, match="prompt file not found"):
        load_prompt("nothing/here", data_dir=tmp_path)


def test_first_line_rule_matches_the_method(prompts_py):
    # the answer rule imported templates carry, against a re-statement of the method's code
    def method(resp: str, modification: str) -> str:
        for line in resp.split("\n"):
            if line.strip().startswith("Edited Description:"):
                description = line.split(":")[1].strip()
                return description if description != "" else modification
        return modification

    answers = [
        "Edited Description: a red dog",
        "Edited Description: a sign: open 24h",
        "Sure.\nEdited Description:   a red dog  \nmore",
        "  Edited Description: indented line",
        "Edited Description:",
        "Edited Description:   \nEdited Description: second",
        "no marker at all",
        "edited description: wrong case",
        "The Edited Description: mid-line",
        "",
    ]
    for resp in answers:
        parsed, _ = first_line_answer(resp, "Edited Description:", ":")
        assert (parsed if parsed is not None else "MOD") == method(resp, "MOD"), resp
