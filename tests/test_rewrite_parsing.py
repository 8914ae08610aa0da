"""Reading the edited description out of what an LLM answered."""

import pytest

from cirkit.components.rewrite import parse_answer

M = "Edited Description:"


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Edited Description: a red dog on a sofa", "a red dog on a sofa"),
        # the whole text after the marker, colons included
        ("Edited Description: a sign that reads: open 24h", "a sign that reads: open 24h"),
        ("Sure! Here it is.\nEdited Description: \"a red dog\"", "a red dog"),
        ("edited description:   **a red dog**  ", "a red dog"),
        ("Edited Description:\na red dog\nlying on a sofa", "a red dog lying on a sofa"),
        ("Edited Description: a red dog\n\nI changed the colour as asked.", "a red dog"),
        ("Edited Description: a red dog\nInstruction: make it blue\nEdited Description: a blue dog", "a red dog"),
        ("Edited Description: a red dog\nNote: the sofa stays.", "a red dog"),
        ("Edited Description: “a red dog”", "a red dog"),
    ],
)
def test_parses(raw, expected):
    assert parse_answer(raw, M) == (expected, "")


@pytest.mark.parametrize(
    "raw, why",
    [
        ("", "empty answer"),
        ("   \n ", "empty answer"),
        ("I cannot help with that.", "no 'Edited Description:' in the answer"),
        ("Edited Description:   ", "nothing after the marker"),
        ("Edited Description: \"\"", "nothing after the marker"),
    ],
)
def test_unparseable(raw, why):
    assert parse_answer(raw, M) == (None, why)


def test_prompt_that_ends_with_the_marker_takes_the_whole_answer():
    assert parse_answer("a red dog", M, marker_in_prompt=True) == ("a red dog", "")


def test_no_marker_configured_takes_the_first_paragraph():
    assert parse_answer("a red dog\n\nextra", None) == ("a red dog", "")


# ----- the line rule: the first line starting with the marker, up to the next colon -----

from cirkit.components.rewrite import first_line_answer  # noqa: E402


def line_rule(resp: str, marker: str = M) -> str | None:
    """The rule re-stated: split into lines; the first line whose stripped form starts with the
    marker gives the text between its first and second colon, stripped; None if that is empty or
    there is no such line."""
    for line in resp.split("\n"):
        if line.strip().startswith(marker):
            between = line.split(":")[1].strip()
            return between or None
    return None


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Edited Description: a red dog on a sofa", "a red dog on a sofa"),
        ("Edited Description: a sign that reads: open 24h", "a sign that reads"),  # a second colon ends it
        ("Sure! Here it is.\nEdited Description: a red dog\nInstruction: x", "a red dog"),  # marker on a later line
        ("   Edited Description:   padded   ", "padded"),
        ("Edited Description: \"quoted\"", "\"quoted\""),  # nothing cleaned but whitespace
        ("Edited Description: first\nEdited Description: second", "first"),
        ("Edited Description: a:b:c", "a"),
        ("Edited Description: ends with colon:", "ends with colon"),
        ("Edited Description: tab\tinside\r", "tab\tinside"),
    ],
)
def test_line_rule_parses(raw, expected):
    assert first_line_answer(raw, M, ":") == (expected, "")
    assert line_rule(raw) == expected


@pytest.mark.parametrize(
    "raw, why",
    [
        ("", "no line starting with"),
        ("I cannot help with that.", "no line starting with"),
        ("edited description: lower case", "no line starting with"),  # the marker's case counts
        ("The Edited Description: mid-line", "no line starting with"),  # it must start the line
        ("Edited Description:", "nothing after"),
        ("Edited Description:    \nEdited Description: later", "nothing after"),  # only the first such line
        ("Edited Description: : after a colon", "nothing after"),
        ("Edited Description\nno colon", "no line starting with"),
    ],
)
def test_line_rule_malformed(raw, why):
    parsed, problem = first_line_answer(raw, M, ":")
    assert parsed is None and why in problem
    assert line_rule(raw) is None


def test_line_rule_without_until_takes_the_rest_of_the_line():
    assert first_line_answer("x\nAnswer: a: b\nc", "Answer:") == ("a: b", "")


def test_output_rules_are_validated(tmp_path):
    from cirkit.errors import CirkitError
    from cirkit.prompts import load_prompt

    path = tmp_path / "t.yaml"
    path.write_text("name: t\ntemplate: hi\noutput: {after: 'A:', first_line: 'A:'}\n")
    with pytest.raises(CirkitError, match="either 'after' or 'first_line'"):
        load_prompt(path)
    path.write_text("name: t\ntemplate: hi\noutput: {until: ':'}\n")
    with pytest.raises(CirkitError, match="'until' goes with 'first_line'"):
        load_prompt(path)


def test_line_rule_is_part_of_the_template_hash(tmp_path):
    from cirkit.prompts import load_prompt

    path = tmp_path / "t.yaml"
    path.write_text("name: t\ntemplate: hi\noutput: {first_line: 'A:', until: ':'}\n")
    one = load_prompt(path).text
    path.write_text("name: t\ntemplate: hi\noutput: {first_line: 'A:'}\n")
    assert load_prompt(path).text != one


# ----- the rewrite step: the rule and the fallback, through a tiny LLM -----

def _rewrite_step(tiny_models, tmp_path, fallback, template_output):
    from cirkit.components.rewrite import Rewrite
    from cirkit.engines import load_model
    from cirkit.pipelines.spec import ModelSpec
    from cirkit.prompts import load_prompt

    path = tmp_path / "rule.yaml"
    path.write_text(
        "name: rule\nvariables: [caption, modification]\n"
        "template: \"Image Content: {caption}\\nInstruction: {modification}\"\n" + template_output
    )
    model = load_model(ModelSpec(type="llm", id=str(tiny_models.llm)))
    params = Rewrite.Params(max_new_tokens=6, fallback=fallback)
    return Rewrite(model=model, prompts=[load_prompt(path)], params=params)


@pytest.mark.parametrize("fallback", ["modification", "caption+modification", "error"])
def test_fallback_when_the_answer_has_no_marker(tiny_models, tmp_path, fallback):
    # the tiny model never writes the marker: every answer falls back
    step = _rewrite_step(tiny_models, tmp_path, fallback, "output: {first_line: 'Edited Description:', until: ':'}\n")
    (result,) = step.run([{"caption": "a dog", "modification": "make it red"}])
    expected = {"modification": "make it red", "caption+modification": "a dog make it red", "error": "a dog make it red"}
    assert result.outputs["description"] == expected[fallback]
    assert "no line starting with 'Edited Description:'" in " ".join(result.notes)
    assert (result.error is not None) == (fallback == "error")


def test_fallback_modification_is_a_valid_param_and_others_are_not():
    from pydantic import ValidationError

    from cirkit.components.rewrite import RewriteParams

    assert RewriteParams(fallback="modification").fallback == "modification"
    with pytest.raises(ValidationError):
        RewriteParams(fallback="caption")


# ----- stop strings -----

def _user(text):
    return [{"role": "user", "content": text}]


def test_stop_strings_cut_like_cutting_the_full_answer(tiny_models):
    from cirkit.engines import GenerationParams, GenerationRequest, load_model
    from cirkit.engines.base import cut_at_stop
    from cirkit.pipelines.spec import ModelSpec

    engine = load_model(ModelSpec(type="llm", id=str(tiny_models.llm)))
    prompts = ["a red dress", "a small blue circle on a white background", "make it green", "two dogs"]
    requests = [GenerationRequest(_user(p)) for p in prompts]
    full = [g.text for (g,) in engine.generate(requests, GenerationParams(max_new_tokens=16))]
    words = sorted({w for text in full for w in text.split()[1:3]})
    assert words, full
    pair = next(" ".join(t.split()[1:3]) for t in full if len(t.split()) > 2)  # spans tokens
    for stop in ([words[0]], [words[-1], words[0]], ["\n\n", "<|endoftext|>"], [pair]):
        params = GenerationParams(max_new_tokens=16, stop=stop)
        got = engine.generate(requests, params)
        expected = [cut_at_stop(text, stop)[0].strip() for text in full]
        assert [g.text for (g,) in got] == expected, stop
        for (g,), text in zip(got, full):
            if cut_at_stop(text, stop)[1]:
                assert g.finish_reason == "stop"
    # beam search is cut afterwards
    beams = engine.generate(requests, GenerationParams(max_new_tokens=8, num_beams=2))
    cut = engine.generate(requests, GenerationParams(max_new_tokens=8, num_beams=2, stop=[words[0]]))
    assert [g.text for (g,) in cut] == [cut_at_stop(g.text, [words[0]])[0].strip() for (g,) in beams]


def test_stop_strings_are_in_the_trace_and_the_cache_key():
    from types import SimpleNamespace

    from cirkit.components.rewrite import RewriteParams
    from cirkit.pipelines.fingerprint import step_hash

    step = SimpleNamespace(kind="rewrite", prompts=[])
    plain, stopped = RewriteParams(), RewriteParams(stop=["\n\n", "<|endoftext|>"])
    assert stopped.decoding()["stop"] == ["\n\n", "<|endoftext|>"]
    assert "stop" not in plain.decoding()  # no stop strings: the keys of earlier runs stay valid
    assert step_hash(None, step, plain).hexdigest() != step_hash(None, step, stopped).hexdigest()
    assert RewriteParams(stop="\n\n").stop == ["\n\n"]


def test_a_changed_answer_marker_changes_the_step_cache_key(tmp_path):
    from cirkit.prompts import load_prompt

    base = "name: t\nvariables: [caption, modification]\ntemplate: '{caption} {modification}'\noutput: {after: 'MARK:'}\n"
    (tmp_path / "a.yaml").write_text(base)
    (tmp_path / "b.yaml").write_text(base.replace("MARK:", "OTHER:"))
    assert load_prompt(tmp_path / "a.yaml").text != load_prompt(tmp_path / "b.yaml").text
