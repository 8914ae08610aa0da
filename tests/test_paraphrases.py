"""`cirkit eval --paraphrases N` on the toy world (shipped toy models): the paraphrases are stored runs,
the pipeline runs once per wording as one experiment each, and the spread and the share of queries
whose target rank changes are recomputed here from what the store holds."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from cirkit.benchmarks import load
from cirkit.toy import benchmark as toy

LIMIT = 8


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("paraphrase-world")
    toy.write_benchmark(root)
    return root


@pytest.fixture(scope="module")
def queries(world):
    return load("cirr", world, toy.SPLIT).queries[:LIMIT]


def evaluate(cli, world, tmp_path, *args):
    return cli("eval", "cirr", "--data", world, "--split", toy.SPLIT, "--pipeline", "toy", "--index", tmp_path / "idx",
               "--limit", LIMIT, *map(str, args))


def test_paraphrases_from_a_file_give_three_experiments_and_their_spread(cli, world, queries, tmp_path):
    # paraphrase 1 words each modification otherwise; paraphrase 2 asks for something else for half the queries
    given = {q.id: [f"please {q.text}", q.text if i % 2 else "make it a large yellow triangle at the top"]
             for i, q in enumerate(queries)}
    path = tmp_path / "paraphrases.json"
    path.write_text(json.dumps(given))
    res = evaluate(cli, world, tmp_path, "--paraphrases", 2, "--paraphrases-file", path, "--json")
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["paraphrases"] == 2 and [v["variant"] for v in out["variants"]] == ["original", "paraphrase 1", "paraphrase 2"]

    store = sqlite3.connect(tmp_path / "data" / "runs.sqlite3")
    experiments = store.execute("SELECT id, setting, metrics FROM experiments WHERE sweep_id=? ORDER BY rowid", (out["sweep"],)).fetchall()
    assert [e[0] for e in experiments] == [v["experiment"] for v in out["variants"]]
    assert [json.loads(e[1]) for e in experiments] == [{"modification": m} for m in ("original", "paraphrase 1", "paraphrase 2")]

    # each query's paraphrases are a stored run, shown by `runs show`
    assert set(out["paraphrase_runs"]) == {q.id for q in queries}
    for qid, run_id in out["paraphrase_runs"].items():
        run = json.loads(cli("runs", "show", run_id, "--json").stdout)
        step = run["steps"][0]
        assert step["name"] == "paraphrase" and step["origin"] == "given" and step["outputs"]["texts"] == given[qid]
    shown = cli("runs", "show", out["paraphrase_runs"][queries[0].id])
    assert shown.exit_code == 0 and f"please {queries[0].text}" in shown.stdout

    # the runs of each variant ran with its wording
    ranks = []
    for v, (exp_id, _, _) in enumerate(experiments):
        rows = store.execute("SELECT query_id, run_id, target_rank FROM experiment_runs WHERE experiment_id=? ORDER BY query_id",
                             (exp_id,)).fetchall()
        assert len(rows) == LIMIT
        for qid, run_id, _ in rows[:3]:
            modification = json.loads(cli("runs", "show", run_id, "--json").stdout)["inputs"]["modification"]
            original = next(q.text for q in queries if q.id == qid)
            assert modification == (original if v == 0 else given[qid][v - 1])
        ranks.append({qid: rank for qid, _, rank in rows})

    # R@1 from the target ranks, its sample sd over the three wordings, and the queries whose rank moved
    r1 = np.array([100 * np.mean([r[qid] == 1 for qid in r]) for r in ranks])
    assert r1 == pytest.approx([json.loads(e[2])["R@1"] for e in experiments])
    summary = out["metrics"]["R@1"]
    assert [summary["original"], *summary["paraphrases"]] == pytest.approx(list(r1))
    assert summary["mean"] == pytest.approx(r1.mean()) and summary["sd"] == pytest.approx(r1.std(ddof=1))
    assert (summary["min"], summary["max"], summary["spread"]) == pytest.approx((r1.min(), r1.max(), r1.max() - r1.min()))
    changed = sorted(qid for qid in ranks[0] if len({r[qid] for r in ranks}) > 1)
    assert sorted(out["queries_changed"]) == changed and out["queries"] == LIMIT
    assert out["rank_changed"] == pytest.approx(len(changed) / LIMIT)
    assert changed  # the other instruction moves some targets

    table = evaluate(cli, world, tmp_path, "--paraphrases", 2, "--paraphrases-file", path)
    assert table.exit_code == 0, table.stderr
    assert "paraphrase 2" in table.stdout and "mean ± sd" in table.stdout and "spread" in table.stdout
    assert f"({len(changed)} of {LIMIT})" in table.stdout


def test_paraphrases_by_the_toy_llm_that_ignores_the_list_format(cli, world, queries, tmp_path, engine_calls_counter):
    res = evaluate(cli, world, tmp_path, "--paraphrases", 2, "--limit", 4, "--json")
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert len(out["variants"]) == 3 and len(out["paraphrase_runs"]) == 4
    by_model: dict[str, int] = {}
    for model, n in engine_calls_counter:
        by_model[Path(model).name] = by_model.get(Path(model).name, 0) + n
    # one paraphrase request per query; the captions are shared by the three wordings through the cache, and
    # paraphrase 2 (the modification itself, see below) takes its rewrites from the original's
    assert by_model["captioner"] == 4 and by_model["llm"] == 4 + 4 + 4
    for qid, run_id in out["paraphrase_runs"].items():
        step = json.loads(cli("runs", "show", run_id, "--json").stdout)["steps"][0]
        original = next(q.text for q in queries if q.id == qid)
        assert step["kind"] == "paraphrase" and step["status"] == "ok" and len(step["outputs"]["texts"]) == 2
        assert "Write 2 other ways" in step["prompts"][0][-1]["content"] and original in step["prompts"][0][-1]["content"]
        # the toy LLM was trained to write one target description: one line, no list
        assert len(step["raw"]) == 1 and step["outputs"]["texts"][0] == step["raw"][0].strip()
        assert step["outputs"]["texts"][1] == original
        assert "paraphrase 2: fallback to the modification: the answer has 1 paraphrase, 2 asked for" in step["notes"]

    # a paraphrase fixed by hand is a new run, like any edited step
    run_id = next(iter(out["paraphrase_runs"].values()))
    res = cli("runs", "edit", run_id, "paraphrase", "--text", "1. move it\n2. shift it")
    assert res.exit_code == 0, res.stderr
    edited = json.loads(cli("runs", "show", json.loads(cli("runs", "list", "--json", "--limit", "1").stdout)[0]["id"], "--json").stdout)
    assert edited["parent_id"] == run_id and edited["steps"][0]["outputs"]["texts"] == ["move it", "shift it"]

    # the next study takes that query's paraphrases as edited, the others' from the step cache
    engine_calls_counter.clear()
    again = json.loads(evaluate(cli, world, tmp_path, "--paraphrases", 2, "--limit", 4, "--json").stdout)
    qid = edited["inputs"]["query_id"]
    assert again["paraphrase_runs"][qid] == edited["id"] and all(again["paraphrase_runs"][q] != r for q, r in out["paraphrase_runs"].items())
    assert sum(n for _, n in engine_calls_counter) == 2  # the rewrites of "move it" and "shift it", nothing else
    store = sqlite3.connect(tmp_path / "data" / "runs.sqlite3")
    for variant, text in zip(again["variants"][1:], ["move it", "shift it"]):
        (run,) = store.execute("SELECT run_id FROM experiment_runs WHERE experiment_id=? AND query_id=?", (variant["experiment"], qid)).fetchone()
        assert json.loads(cli("runs", "show", run, "--json").stdout)["inputs"]["modification"] == text


def test_an_answer_that_ignores_the_format_falls_back_or_fails_the_query_in_one_line():
    from cirkit.components.paraphrase import Paraphrase, ParaphraseParams, parse_paraphrases
    from cirkit.engines import ModelPool
    from cirkit.pipelines import load_pipeline
    from cirkit.prompts import load_prompt

    assert parse_paraphrases("Sure! Here are two:\n1. make it red\n2) \"turn it red\"\nHope this helps.") == ["make it red", "turn it red"]
    assert parse_paraphrases("- make it red\n* turn it red") == ["make it red", "turn it red"]
    assert parse_paraphrases("Here you go:\nmake it red") == ["make it red"]
    assert parse_paraphrases("  \n") == []

    llm = ModelPool().get(load_pipeline("toy").models["llm"])
    prompt = [load_prompt("paraphrase-modification", None)]
    items = [{"modification": "make it green"}, {"modification": "move it to the left"}]
    strict = Paraphrase(ParaphraseParams(count=3, max_new_tokens=24, fallback="error"), model=llm, prompts=prompt).run(items)
    for result in strict:
        assert result.error and "\n" not in result.error and "3 asked for" in result.error and result.raw
    lenient = Paraphrase(ParaphraseParams(count=3, max_new_tokens=24), model=llm, prompts=prompt).run(items)
    for item, result in zip(items, lenient):
        assert result.error is None and len(result.outputs["texts"]) == 3 and result.outputs["texts"][-1] == item["modification"]
        assert any("fallback to the modification" in note for note in result.notes)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--paraphrases", "0"], "--paraphrases must be between 1 and 10, got 0"),
        (["--paraphrases", "11"], "--paraphrases must be between 1 and 10, got 11"),
        (["--paraphrases", "2", "--repeats", "2"], "--paraphrases and --repeats each run the pipeline several times"),
        (["--paraphrase-model", "llm"], "--paraphrase-model goes with --paraphrases N"),
        (["--paraphrases", "2", "--paraphrase-model", "clip"], "--paraphrase-model clip: 'clip' is a clip model"),
        (["--paraphrases", "2", "--paraphrase-model", "gpt"], "--paraphrase-model gpt: pipeline 'toy' has no model 'gpt'"),
        (["--paraphrases", "3", "--paraphrases-file", "FILE"], "has 2 paraphrases, --paraphrases asks for 3"),
        (["--paraphrases", "2", "--paraphrases-file", "NOFILE"], "field 'given': cannot read"),
    ],
)
def test_bad_paraphrase_options_are_one_line_before_any_model_loads(cli, world, queries, tmp_path, engine_calls_counter, args, message):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({q.id: ["a", "b"] for q in queries}))
    args = [str(path) if a == "FILE" else str(tmp_path / "none.json") if a == "NOFILE" else a for a in args]
    res = evaluate(cli, world, tmp_path, *args)
    assert res.exit_code == 1, res.stdout
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.stderr
    assert engine_calls_counter == [] and not (tmp_path / "idx").exists()


def test_a_pipeline_without_an_llm_is_refused(cli, world, tmp_path):
    from cirkit.pipelines.spec import builtin_path

    clip = builtin_path("toy").parent / "../../toy/models/clip"
    path = tmp_path / "clip-only.yaml"
    path.write_text(
        "name: clip-only\nmodels:\n  clip: {type: clip, name: %s, pretrained: %s}\n"
        "steps:\n  - {name: embed, kind: embed, model: clip, inputs: {texts: modification}}\n  - {name: search, kind: search}\n"
        % ((clip / "toy-clip.json").resolve(), (clip / "toy-clip.safetensors").resolve())
    )
    res = cli("eval", "cirr", "--data", world, "--split", toy.SPLIT, "--pipeline", path, "--index", tmp_path / "idx",
              "--limit", LIMIT, "--paraphrases", "2")
    assert res.exit_code == 1 and "--paraphrases: pipeline 'clip-only' has no llm model to paraphrase with" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "idx").exists()


def test_a_sweep_refuses_paraphrases_in_one_line(cli, world, tmp_path):
    res = cli("eval", "sweep", "cirr", "--data", world, "--split", toy.SPLIT, "--pipeline", "toy", "--grid", "search.k=[10]",
              "--paraphrases", "2")
    assert res.exit_code == 1 and "--paraphrases goes with cirkit eval BENCH, not with a sweep" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
