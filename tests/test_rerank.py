"""The rerank step: a multimodal LLM judges the top-K candidates (yes/no) and its scores reorder them.

The judge is the tiny Qwen2-VL whose output layer keeps only "yes" and "no" (tests/tiny_models.py):
it answers yes for some (reference, candidate) pairs and no for others. It runs in process
(transformers engine, P(yes) from log-probabilities) and behind a real `transformers serve`
(openai engine: that server gives no log-probabilities, so the answer is parsed).
"""

from __future__ import annotations

import math

import pytest

from cirkit.components.rerank import verifier_score
from conftest import write_pipeline

JUDGE_PROMPT = """name: judge
variables: []
template: "Does the candidate match? Answer yes or no."
"""


@pytest.fixture(autouse=True)
def _no_proxy_for_localhost(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.mark.parametrize(
    "text, logprobs, expected",
    [
        ("Yes.", None, (1.0, "parsed")),
        ("no, it is not", None, (0.0, "parsed")),
        ("**YES** it matches", None, (1.0, "parsed")),
        ("8/10", None, (0.8, "parsed")),
        ("Score: 0.3", None, (0.3, "parsed")),
        ("75%", None, (0.75, "parsed")),
        ("7", None, (0.7, "parsed")),
        ("maybe", None, (None, "unparsed")),
        ("", None, (None, "unparsed")),
        ("-5", None, (None, "unparsed")),
        ("nope", {"yes": math.log(0.2), "no": math.log(0.6)}, (0.25, "logprobs")),
        ("yes", {"yes": math.log(0.2)}, (1.0, "parsed")),  # half the log-probabilities: the text decides
    ],
)
def test_verifier_score_from_logprobs_or_the_parsed_answer(text, logprobs, expected):
    score, source = verifier_score(text, logprobs)
    assert source == expected[1]
    assert score == pytest.approx(expected[0]) if expected[0] is not None else score is None


def _rerank_pipeline(tmp_path, models, judge, *, engine: str = "", k: int = 8, weight: float = 10.0, search_k: int = 20, judge_id=None):
    (tmp_path / "judge.yaml").write_text(JUDGE_PROMPT)
    base = write_pipeline(tmp_path / "base.yaml", models).read_text().replace("params: {k: 50}", f"params: {{k: {search_k}}}")
    text = base.replace(
        "steps:", f'  judge: {{type: vlm, id: "{judge_id or judge}"{engine}}}\nsteps:'
    ) + f"  - {{name: rerank, kind: rerank, model: judge, prompt: ./judge.yaml, params: {{k: {k}, weight: {weight}, max_new_tokens: 1}}}}\n"
    path = tmp_path / "rerank.yaml"
    path.write_text(text)
    return path


def _check_reordered(run, k: int, weight: float):
    rerank = run["steps"][-1]
    search = run["steps"][-2]["outputs"]["results"]
    verdicts = rerank["outputs"]["verdicts"]
    assert [v["path"] for v in verdicts] == [h["path"] for h in search[:k]]
    final = {v["path"]: v["score"] for v in verdicts}
    for v, hit in zip(verdicts, search):
        assert v["retrieval_score"] == pytest.approx(hit["score"])
        bonus = weight * v["verifier"] if v["verifier"] is not None else 0.0
        assert v["score"] == pytest.approx(hit["score"] + bonus)
    results = run["results"]
    top = [h["path"] for h in results[:k]]
    assert top == sorted(final, key=lambda p: -final[p])  # the candidates are in the order of their scores
    assert [h["path"] for h in results[k:]] == [h["path"] for h in search[k : len(results)]]  # below K: untouched
    assert [h["rank"] for h in results] == list(range(1, len(results) + 1))
    return verdicts, results


def test_rerank_in_process_orders_by_the_judges_probabilities(tiny_models, tiny_judge, gallery, gallery_index, tmp_path, engine_calls_counter, cli):
    from cirkit.api import query_many
    from cirkit.pipelines.runner import Query

    path = _rerank_pipeline(tmp_path, tiny_models, tiny_judge)
    queries = [Query(gallery / "img0007.jpg", "make it darker", "q1"), Query(gallery / "img0004.jpg", "make it green", "q2")]
    runs = query_many(queries, gallery_index, pipeline=path, k=20, data_dir=tmp_path / "data")
    for run in runs:
        verdicts, results = _check_reordered(run, k=8, weight=10.0)
        assert all(v["source"] == "logprobs" and 0 < v["verifier"] < 1 for v in verdicts)
        assert len({round(v["verifier"], 4) for v in verdicts}) > 1
        assert [h["path"] for h in results[:8]] != [v["path"] for v in verdicts]  # the judge changed the order
        assert run["steps"][-1]["prompts"][0]["images"] == ["reference", "candidate"]
        assert run["steps"][-1]["raw"] == [v["answer"] for v in verdicts]
    # every (query, candidate) pair of the batch in one call to the judge
    judge_calls = [n for model, n in engine_calls_counter if model == str(tiny_judge)]
    assert judge_calls == [16]

    shown = cli("--data-dir", tmp_path / "data", "runs", "show", runs[0]["id"])
    assert shown.exit_code == 0, shown.stderr
    first = runs[0]["steps"][-1]["outputs"]["verdicts"][0]
    assert f"P(yes) {first['verifier']:.3f} (logprobs)" in shown.stdout
    top = runs[0]["results"][0]
    rows = [[cell.strip() for cell in line.split("│")] for line in shown.stdout.splitlines() if line.startswith("│")]
    assert ["", "1", f"{top['score']:.4f}", f"{top['verifier']:.3f}"] in [row[:4] for row in rows]  # the results table
    report = cli("--data-dir", tmp_path / "data", "report", runs[0]["id"], "--out", tmp_path / "r.html")
    assert report.exit_code == 0, report.stderr
    html = (tmp_path / "r.html").read_text()
    assert "data-verifier=" in html and f"judge: {first['answer']}" in html


def test_rerank_through_an_openai_compatible_server_parses_the_answers(tiny_models, tiny_judge, gallery, gallery_index, tmp_path, transformers_server):
    from cirkit.api import query

    # a reference image for which the judge, in process, says yes to some candidates and no to others
    (tmp_path / "local").mkdir()
    local_path = _rerank_pipeline(tmp_path / "local", tiny_models, tiny_judge)
    for name in ("img0007.jpg", "img0001.jpg", "img0002.jpg", "img0004.jpg", "img0005.jpg", "img0010.jpg", "img0011.jpg"):
        local = query(gallery / name, "make it darker", gallery_index, pipeline=local_path, k=20, data_dir=tmp_path / "data")
        if {v["answer"] for v in local["steps"][-1]["outputs"]["verdicts"]} == {"yes", "no"}:
            break
    else:
        pytest.fail("the tiny judge gives the same answer to every candidate of every reference image tried")

    engine = f', engine: openai, base_url: "{transformers_server}", max_concurrency: 4'
    path = _rerank_pipeline(tmp_path, tiny_models, tiny_judge, engine=engine, judge_id=str(tiny_judge))
    run = query(gallery / name, "make it darker", gallery_index, pipeline=path, k=20, data_dir=tmp_path / "data")
    verdicts, results = _check_reordered(run, k=8, weight=10.0)
    assert all(v["source"] == "parsed" and v["answer"] in ("yes", "no") for v in verdicts)
    # the same answers as in process, through the server
    assert [v["answer"] for v in verdicts] == [v["answer"] for v in local["steps"][-1]["outputs"]["verdicts"]]
    answers = {v["path"]: v["answer"] for v in verdicts}
    top = [answers[h["path"]] for h in results[:8]]
    assert top == sorted(top, key=lambda a: a != "yes")  # every yes before every no
    assert top != [v["answer"] for v in verdicts]  # which is not the retrieval order


def test_answers_that_are_neither_yes_no_nor_a_number_keep_the_retrieval_score(tiny_models, gallery, gallery_index, tmp_path, transformers_server):
    from cirkit.api import query

    # the plain tiny Qwen2-VL answers random words; the server gives no log-probabilities
    engine = f', engine: openai, base_url: "{transformers_server}", max_concurrency: 4'
    path = _rerank_pipeline(tmp_path, tiny_models, tiny_models.qwen2vl, engine=engine, k=5)
    path.write_text(path.read_text().replace("max_new_tokens: 1", "max_new_tokens: 3"))
    run = query(gallery / "img0005.jpg", "make it blue", gallery_index, pipeline=path, k=10, data_dir=tmp_path / "data")
    assert run["status"] == "ok"
    verdicts, results = _check_reordered(run, k=5, weight=10.0)
    assert all(v["source"] == "unparsed" and v["verifier"] is None for v in verdicts)
    search = run["steps"][-2]["outputs"]["results"]
    assert [(h["path"], h["score"]) for h in results] == [(h["path"], pytest.approx(h["score"])) for h in search[: len(results)]]
    notes = run["steps"][-1]["notes"]
    assert len(notes) == 5 and all("is neither yes/no nor a number: kept its retrieval score" in n for n in notes)


def test_k_larger_than_the_gallery_judges_every_candidate(tiny_models, tiny_judge, gallery, gallery_index, tmp_path):
    from cirkit.api import query

    path = _rerank_pipeline(tmp_path, tiny_models, tiny_judge, k=100, search_k=100)
    run = query(gallery / "img0008.jpg", "make it red", gallery_index, pipeline=path, k=100, data_dir=tmp_path / "data")
    verdicts, results = _check_reordered(run, k=100, weight=10.0)
    assert len(verdicts) == len(results) == 30  # the whole gallery
    assert "k=100 but the search returned 30 candidates: judged them all" in run["steps"][-1]["notes"]


@pytest.mark.parametrize(
    "params, message",
    [
        ("{weight: -1}", "field 'params.weight': Input should be greater than or equal to 0"),
        ("{weight: 1000}", "field 'params.weight': Input should be less than or equal to 100"),
        ("{k: 0}", "field 'params.k': Input should be greater than or equal to 1"),
        ("{n: 2, temperature: 1}", "field 'params.n': Input should be less than or equal to 1"),
    ],
)
def test_rerank_params_out_of_range_are_refused(tiny_models, tiny_judge, tmp_path, cli, params, message):
    path = _rerank_pipeline(tmp_path, tiny_models, tiny_judge)
    text = path.read_text()
    path.write_text(text[: text.rindex("params: {")] + f"params: {params}}}\n")
    result = cli("pipelines", "validate", path)
    assert result.exit_code != 0 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_candidate_image_that_cannot_be_read_is_left_unjudged(tiny_models, tiny_judge, tmp_path):
    import shutil

    from cirkit.api import index_folder, query
    from conftest import make_gallery

    gallery = make_gallery(tmp_path / "gallery", 12)
    pipeline = _rerank_pipeline(tmp_path, tiny_models, tiny_judge, k=12, search_k=12)
    index_folder(gallery, tmp_path / "idx", pipeline=tmp_path / "base.yaml")
    reference = tmp_path / "reference.jpg"
    shutil.copy(gallery / "img0001.jpg", reference)
    (gallery / "img0002.jpg").write_bytes(b"not a jpeg any more")  # broken after indexing
    run = query(reference, "make it red", tmp_path / "idx", pipeline=pipeline, k=12, data_dir=tmp_path / "data")
    assert run["status"] == "ok"
    verdicts, results = _check_reordered(run, k=12, weight=10.0)
    broken = next(v for v in verdicts if v["path"] == "img0002.jpg")
    assert broken["source"] == "unjudged" and broken["verifier"] is None
    assert sum(v["source"] == "logprobs" for v in verdicts) == 11
    assert any(n.startswith(f"#{broken['rank']} img0002.jpg: candidate image:") and n.endswith("kept its retrieval score") for n in run["steps"][-1]["notes"])
