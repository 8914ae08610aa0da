"""Per-query control flow: a step that runs only when a condition on earlier outputs holds, and a
bounded loop over a group of steps. Every round is stored and shown; re-runs and hand edits work
inside loops. Run on the tiny random-weight models: the tiny yes/no judge makes the confidences.
"""

from __future__ import annotations

import json

import pytest

from cirkit.api import query_many
from cirkit.errors import CirkitError
from cirkit.pipelines import load_pipeline
from cirkit.pipelines.runner import Query


def _loop_pipeline(tmp_path, tiny_models, judge, *, threshold: float, rounds: int = 2, when: str | None = None) -> str:
    """Search with the modification, judge the top 6; while the judge's best P(yes) is below the
    threshold, rewrite, search and judge again (at most `rounds` rounds); then `finish` (kept only
    for queries meeting `when`, if given)."""
    finish = f"\n    when: {when}" if when else ""
    path = tmp_path / f"loop-{threshold}-{rounds}.yaml"
    path.write_text(
        f"""name: loop-test
models:
  llm: {{type: llm, id: "{tiny_models.llm}"}}
  judge: {{type: vlm, id: "{judge}"}}
  clip: {{type: clip, name: "{tiny_models.clip_config}", pretrained: "{tiny_models.clip_checkpoint}"}}
steps:
  - {{name: embed, kind: embed, model: clip, inputs: {{texts: modification}}}}
  - {{name: search, kind: search, params: {{k: 6}}}}
  - {{name: judge, kind: rerank, model: judge, prompt: rerank-yes-no, inputs: {{description: modification}}, params: {{k: 6, max_new_tokens: 1}}}}
  - name: again
    kind: rewrite
    model: llm
    prompt: cirevl-rewrite
    inputs: {{caption: modification}}
    params: {{temperature: 1.0, seed: 0, max_new_tokens: 6, fallback: modification}}
    loop: {{through: judge_again, while: confidence < {threshold}, max_rounds: {rounds}}}
  - {{name: embed_again, kind: embed, model: clip, inputs: {{texts: again.descriptions}}}}
  - {{name: search_again, kind: search, inputs: {{query_vectors: embed_again.query_vectors}}, params: {{k: 6}}}}
  - {{name: judge_again, kind: rerank, model: judge, prompt: rerank-yes-no, inputs: {{results: search_again.results, description: modification}}, params: {{k: 6, max_new_tokens: 1}}}}
  - name: finish
    kind: rerank
    model: judge
    prompt: rerank-yes-no
    inputs: {{description: modification}}
    params: {{k: 3, max_new_tokens: 1}}{finish}
"""
    )
    return str(path)


def _run(tmp_path, pipeline, gallery, gallery_index, images=("img0004.jpg", "img0011.jpg", "img0020.jpg", "img0022.jpg")):
    queries = [Query(gallery / name, "make it red", id=name) for name in images]
    return query_many(queries, gallery_index, pipeline=pipeline, data_dir=tmp_path / "data", k=6)


def _trace(run):
    return [(s["name"], s["round"], s["status"]) for s in run["steps"]]


def test_a_loop_runs_per_query_while_its_condition_holds_and_up_to_its_bound(tmp_path, tiny_models, tiny_judge, gallery, gallery_index):
    # never entered: every query's loop is skipped with a note, and the run goes on after it
    skipped = _run(tmp_path, _loop_pipeline(tmp_path, tiny_models, tiny_judge, threshold=-1), gallery, gallery_index)
    for run in skipped:
        assert _trace(run) == [("embed", 0, "ok"), ("search", 0, "ok"), ("judge", 0, "ok"), ("again", 0, "skipped"), ("finish", 0, "ok")]
        (note,) = run["steps"][3]["notes"]
        confidence = run["steps"][2]["outputs"]["confidence"]
        assert confidence == max(v["verifier"] for v in run["steps"][2]["outputs"]["verdicts"])
        assert note == f"loop not entered: confidence = {confidence:.4g}: 'confidence < -1' does not hold"
        assert run["steps"][4]["prompts"] and [s["position"] for s in run["steps"]] == [0, 1, 2, 3, 4]
    confidences = sorted(run["steps"][2]["outputs"]["confidence"] for run in skipped)
    assert confidences[0] < confidences[-1]

    # always holds: two rounds for every query, each stored in order, the bound said
    looped = _run(tmp_path, _loop_pipeline(tmp_path, tiny_models, tiny_judge, threshold=2), gallery, gallery_index)
    body = ["again", "embed_again", "search_again", "judge_again"]
    for run in looped:
        assert _trace(run) == (
            [("embed", 0, "ok"), ("search", 0, "ok"), ("judge", 0, "ok")]
            + [(name, r, "ok") for r in (0, 1) for name in body] + [("finish", 0, "ok")]
        )
        ends = [s for s in run["steps"] if s["name"] == "judge_again"]
        assert ends[0]["notes"][-1].startswith("round 2 of at most 2: confidence = ")
        assert ends[1]["notes"][-1].startswith("loop ends at its bound, 2 round(s): confidence = ")
        # the step after the loop read the last round's results
        assert [h["path"] for h in run["steps"][-1]["outputs"]["verdicts"]] == [h["path"] for h in ends[1]["outputs"]["results"][:3]]

    # a threshold between the queries' confidences: only the less sure ones loop, and they stop
    # as soon as their judge is sure enough
    middle = (confidences[0] + confidences[-1]) / 2
    mixed = _run(tmp_path, _loop_pipeline(tmp_path, tiny_models, tiny_judge, threshold=middle, rounds=3), gallery, gallery_index)
    for run in mixed:
        first = run["steps"][2]["outputs"]["confidence"]
        rounds = [s for s in run["steps"] if s["name"] == "judge_again"]
        if first >= middle:
            assert not rounds and run["steps"][3]["status"] == "skipped"
            continue
        seen = [r["outputs"]["confidence"] for r in rounds]
        assert 1 <= len(rounds) <= 3 and all(c < middle for c in seen[:-1])
        assert seen[-1] >= middle or len(rounds) == 3
        assert rounds[-1]["notes"][-1].startswith("loop ends")
        # the run's results are the last step's, which read the results of the last round
        assert run["steps"][-1]["name"] == "finish"
    assert any(run["steps"][3]["status"] == "ok" for run in mixed) and any(run["steps"][3]["status"] == "skipped" for run in mixed)


def test_when_skips_a_step_for_queries_that_do_not_meet_it(tmp_path, tiny_models, tiny_judge, gallery, gallery_index):
    runs = _run(tmp_path, _loop_pipeline(tmp_path, tiny_models, tiny_judge, threshold=-1), gallery, gallery_index)
    middle = sum(sorted(r["steps"][2]["outputs"]["confidence"] for r in runs)[::2]) / 2
    gated = _run(tmp_path, _loop_pipeline(tmp_path, tiny_models, tiny_judge, threshold=-1, when=f"judge.confidence >= {middle}"),
                 gallery, gallery_index)
    for run in gated:
        confidence = run["steps"][2]["outputs"]["confidence"]
        finish = run["steps"][-1]
        if confidence >= middle:
            assert finish["status"] == "ok" and run["results"][0]["path"] == finish["outputs"]["results"][0]["path"]
        else:
            assert finish["status"] == "skipped" and finish["notes"] == [
                f"skipped: judge.confidence = {confidence:.4g}: 'judge.confidence >= {middle:g}' does not hold"]
            # the results are those of the last step that ran
            assert [h["path"] for h in run["results"]] == [h["path"] for h in run["steps"][2]["outputs"]["results"][:6]]


def test_runs_show_rerun_and_edit_inside_a_loop(cli, tmp_path, tiny_models, tiny_judge, gallery, gallery_index, engine_calls_counter):
    pipeline = _loop_pipeline(tmp_path, tiny_models, tiny_judge, threshold=2)
    res = cli("query", "-i", gallery_index, "--image", gallery / "img0004.jpg", "-t", "make it red", "-p", pipeline, "--json")
    assert res.exit_code == 0, res.stderr
    run_id = json.loads(res.stdout)["id"]
    shown = cli("runs", "show", run_id)
    assert shown.exit_code == 0, shown.stderr
    flat = " ".join(shown.stdout.replace("│", " ").split())
    assert "4. again (rewrite)" in flat and "8. again round 1 (rewrite)" in flat and "11. judge_again round 1 (rerank)" in flat
    assert "loop ends at its bound, 2 round(s)" in flat

    # re-run from round 1's search: everything before it copied, in order; only search and judge run
    engine_calls_counter.clear()
    res = cli("runs", "rerun", run_id, "--from", "search_again", "--round", "1", "--no-cache")
    assert res.exit_code == 0, res.stderr
    new = json.loads(cli("runs", "show", json.loads(cli("runs", "list", "--json").stdout)[0]["id"], "--json").stdout)
    old = json.loads(cli("runs", "show", run_id, "--json").stdout)
    assert [(s["name"], s["round"]) for s in new["steps"]] == [(s["name"], s["round"]) for s in old["steps"]]
    assert [s["origin"] for s in new["steps"]] == ["copied"] * 9 + ["ran"] * 3
    assert engine_calls_counter == [(str(tiny_judge), 6), (str(tiny_judge), 3)]

    # a hand edit of round 1's rewrite: round 1 goes on from it, and the loop ends at its bound as before
    res = cli("runs", "edit", run_id, "again", "--round", "1", "--text", "a red square")
    assert res.exit_code == 0, res.stderr
    edited = json.loads(cli("runs", "show", json.loads(cli("runs", "list", "--json").stdout)[0]["id"], "--json").stdout)
    rows = [(s["name"], s["round"], s["origin"]) for s in edited["steps"]]
    assert rows[7] == ("again", 1, "edited") and rows[8][:2] == ("embed_again", 1)
    assert edited["steps"][8]["prompts"] == ["a red square"]
    assert edited["change"] == {"from": "again", "round": 1, "edited": "again", "text": "a red square"}

    # a round the step never ran, and a round of a step outside the loop: one line each
    res = cli("runs", "rerun", run_id, "--from", "again", "--round", "5")
    assert res.exit_code != 0 and "has no round 5 (it ran rounds 0, 1)" in res.stderr and "Traceback" not in res.stderr
    res = cli("runs", "rerun", run_id, "--from", "search", "--round", "1")
    assert res.exit_code != 0 and "step 'search' is in no loop" in res.stderr


LOOP_STEPS = """name: bad
models:
  clip: {type: clip, name: ViT-B-32, pretrained: openai}
  judge: {type: vlm, id: some/judge}
steps:
  - {name: embed, kind: embed, model: clip, inputs: {texts: modification}}
  - {name: search, kind: search}
  - {name: judge, kind: rerank, model: judge, prompt: rerank-yes-no, inputs: {description: modification}}
  - name: embed_again
    kind: embed
    model: clip
    inputs: {texts: modification}
    LOOP
  - {name: search_again, kind: search}
  - {name: judge_again, kind: rerank, model: judge, prompt: rerank-yes-no, inputs: {description: modification}}
"""


@pytest.mark.parametrize("loop, message", [
    ("loop: {through: judge_again, while: confidence < 0.5}",
     "step 'embed_again': field 'loop.max_rounds': a loop needs a bound: the most rounds a query may run (1..20)"),
    ("loop: {through: judge_again, while: confidence < 0.5, max_rounds: 0}", "field 'loop.max_rounds': 0 is out of range (1..20)"),
    ("loop: {through: search, while: confidence < 0.5, max_rounds: 2}", "field 'loop.through': 'search' is not this step or a later one"),
    ("loop: {through: nowhere, while: confidence < 0.5, max_rounds: 2}", "field 'loop.through': 'nowhere' is not this step or a later one"),
    ("loop: {through: judge_again, while: verify.confidence < 0.5, max_rounds: 2}",
     "field 'loop.while': no earlier step makes 'verify.confidence' (values a condition can test: confidence, judge.confidence)"),
    ("loop: {through: judge_again, while: results < 0.5, max_rounds: 2}",
     "field 'loop.while': 'results' is of type results; a condition tests a score (available: confidence, judge.confidence)"),
    ("loop: {through: judge_again, while: confidence is low, max_rounds: 2}",
     "field 'loop.while': condition 'confidence is low' is not VALUE OP NUMBER"),
    ("loop: {through: judge_again, max_rounds: 2}", "field 'loop.while': Field required"),
    ("when: judge_again.confidence > 0.5", "field 'when': no earlier step makes 'judge_again.confidence'"),
    ("as: {vectors: v}", "field 'as': a embed step has no output 'vectors' (its outputs: query_vectors)"),
])
def test_bad_conditions_and_loops_are_one_line_before_any_model_loads(tmp_path, loop, message):
    path = tmp_path / "bad.yaml"
    path.write_text(LOOP_STEPS.replace("LOOP", loop))
    with pytest.raises(CirkitError) as err:
        load_pipeline(path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_loops_may_not_overlap(tmp_path):
    text = LOOP_STEPS.replace("LOOP", "loop: {through: judge_again, while: confidence < 0.5, max_rounds: 2}").replace(
        "  - {name: search_again, kind: search}",
        "  - {name: search_again, kind: search, loop: {through: judge_again, while: confidence < 0.5, max_rounds: 2}}")
    path = tmp_path / "overlap.yaml"
    path.write_text(text)
    with pytest.raises(CirkitError, match="step 'search_again' is already in the loop opened by 'embed_again'; loops may not overlap"):
        load_pipeline(path)


def test_the_confidence_of_a_missing_verdict_does_not_meet_a_condition():
    from cirkit.pipelines.control import Condition

    condition = Condition.parse("judge.confidence <= 0.7")
    assert condition.holds({"judge.confidence": 0.7}) == (True, "judge.confidence = 0.7: 'judge.confidence <= 0.7' holds")
    assert condition.holds({"judge.confidence": 0.71})[0] is False
    assert condition.holds({"judge.confidence": None}) == (False, "judge.confidence has no value, so 'judge.confidence <= 0.7' does not hold")


@pytest.mark.parametrize("threshold, records", [(-1, [("judge_again", 0, "skipped")]), (2, [("judge_again", 0, "ok"), ("judge_again", 1, "ok")])])
def test_a_loop_of_one_step(tmp_path, tiny_models, tiny_judge, gallery, gallery_index, threshold, records):
    path = tmp_path / "one.yaml"
    path.write_text(f"""name: one-step-loop
models:
  judge: {{type: vlm, id: "{tiny_judge}"}}
  clip: {{type: clip, name: "{tiny_models.clip_config}", pretrained: "{tiny_models.clip_checkpoint}"}}
steps:
  - {{name: embed, kind: embed, model: clip, inputs: {{texts: modification}}}}
  - {{name: search, kind: search, params: {{k: 4}}}}
  - {{name: judge, kind: rerank, model: judge, prompt: rerank-yes-no, inputs: {{description: modification}}, params: {{k: 4, max_new_tokens: 1}}}}
  - name: judge_again
    kind: rerank
    model: judge
    prompt: rerank-yes-no
    inputs: {{description: modification}}
    params: {{k: 4, max_new_tokens: 1}}
    loop: {{through: judge_again, while: confidence < {threshold}, max_rounds: 2}}
""")
    (run,) = _run(tmp_path, str(path), gallery, gallery_index, images=("img0004.jpg",))
    assert _trace(run)[3:] == records
    assert run["steps"][-1]["notes"][-1].startswith("loop not entered" if threshold < 0 else "loop ends at its bound, 2 round(s)")


def test_a_step_reading_what_a_skipped_step_did_not_make_fails_that_query_in_one_line(tmp_path, tiny_models, tiny_judge, gallery, gallery_index):
    path = _loop_pipeline(tmp_path, tiny_models, tiny_judge, threshold=-1, when="judge.confidence > 2")
    text = open(path).read() + "  - {name: after, kind: embed, model: clip, inputs: {texts: modification}}\n" \
        "  - {name: uses_finish, kind: merge, inputs: {a: finish.results, b: search.results}}\n"
    (tmp_path / "reads-skipped.yaml").write_text(text)
    runs = _run(tmp_path, str(tmp_path / "reads-skipped.yaml"), gallery, gallery_index, images=("img0004.jpg", "img0011.jpg"))
    for run in runs:
        assert run["status"] == "failed"
        assert [(s["name"], s["status"]) for s in run["steps"]][-3:] == [("finish", "skipped"), ("after", "ok"), ("uses_finish", "failed")]
        assert run["error"] == ("step 'uses_finish' failed: input 'a' reads 'finish.results', which no step made for this query "
                                "(the step that makes it was skipped)")


def test_the_wiring_says_when_a_value_depends_on_the_path_a_query_took():
    fuse = next(s for s in load_pipeline("wiser").wiring() if s["step"] == "fuse")
    assert fuse["inputs"]["a"] == {"from": "latest of verify_text.results, verify_text_again.results", "type": "results"}
    assert fuse["inputs"]["b"]["from"] == "latest of verify_image.results, verify_image_again.results"
    judge = next(s for s in load_pipeline("wiser").wiring() if s["step"] == "verify_text")
    assert judge["inputs"]["results"]["from"] == "search_text.results"


def test_a_cached_output_without_an_output_the_step_now_makes_runs_again(tmp_path, tiny_models, tiny_judge, gallery, gallery_index):
    """A rerank cached before steps made `confidence` would leave a loop's condition without a value."""
    import sqlite3

    pipeline = _loop_pipeline(tmp_path, tiny_models, tiny_judge, threshold=-1)
    (first,) = _run(tmp_path, pipeline, gallery, gallery_index, images=("img0004.jpg",))
    with sqlite3.connect(tmp_path / "data" / "runs.sqlite3") as db:
        for key, record in db.execute("SELECT key, record FROM cache").fetchall():
            data = json.loads(record)
            if "confidence" in data["outputs"]:
                del data["outputs"]["confidence"]
                db.execute("UPDATE cache SET record=? WHERE key=?", (json.dumps(data), key))
    (again,) = _run(tmp_path, pipeline, gallery, gallery_index, images=("img0004.jpg",))
    origins = {s["name"]: s["origin"] for s in again["steps"]}
    assert origins["embed"] == "cache" and origins["judge"] == "ran"
    assert again["steps"][2]["outputs"]["confidence"] == first["steps"][2]["outputs"]["confidence"]
