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
