"""Prompt/sample ensembles and their fusion; many queries in one batch."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cirkit.components.search import Search, SearchParams, fuse_vectors, rrf
from conftest import synthetic_index, write_pipeline


# unit vectors along the axes, and between them
GALLERY = {"x": [1, 0, 0], "y": [0, 1, 0], "z": [0, 0, 1], "xy": [0.6, 0.8, 0], "yz": [0, 0.6, 0.8]}


def _search(vectors, **params):
    component = Search(SearchParams(**params), index=synthetic_index(GALLERY))
    (result,) = component.run([{"query_vectors": np.array(vectors, dtype=np.float32)}])
    assert result.error is None, result.error
    return [(r["path"], round(r["score"], 4)) for r in result.outputs["results"]]


def test_mean_fusion_exact_vector_and_ranking():
    fused = fuse_vectors(np.array([[1, 0, 0], [0, 1, 0]], dtype=np.float32))
    np.testing.assert_allclose(fused, [2**-0.5, 2**-0.5, 0], atol=1e-6)
    top = _search([[1, 0, 0], [0, 1, 0]], k=3)
    assert top[0] == ("xy", 0.9899) and set(top[1:]) == {("x", 0.7071), ("y", 0.7071)}  # x and y tie


def test_weighted_fusion_per_vector_and_per_template():
    # weights 3:1 -> (0.75, 0.25, 0) normalized = (0.9487, 0.3162, 0)
    fused = fuse_vectors(np.array([[1, 0, 0], [0, 1, 0]], dtype=np.float32), [3, 1])
    np.testing.assert_allclose(fused, [0.9487, 0.3162, 0], atol=1e-4)
    assert _search([[1, 0, 0], [0, 1, 0]], k=2, fusion="weighted", weights=[3, 1]) == [("x", 0.9487), ("xy", 0.8222)]
    # one weight per template, 2 samples each: [x, x, y, y] with weights [1, 4] -> (0.2, 0.8, 0) normalized
    four = [[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0]]
    assert _search(four, k=2, fusion="weighted", weights=[1, 4]) == [("y", 0.9701), ("xy", 0.9216)]
    component = Search(SearchParams(k=1, fusion="weighted", weights=[1, 2, 3]), index=synthetic_index(GALLERY))
    (bad,) = component.run([{"query_vectors": np.array(four, dtype=np.float32)}])
    assert bad.error == "3 weights do not fit 4 query vectors"


def test_rrf_fusion_exact_scores():
    ranked = [
        [{"rank": 1, "path": "a"}, {"rank": 2, "path": "b"}, {"rank": 3, "path": "c"}],
        [{"rank": 1, "path": "c"}, {"rank": 2, "path": "a"}, {"rank": 3, "path": "d"}],
    ]
    fused = rrf(ranked, k=3, rrf_k=1)
    # a: 1/2 + 1/3 = 0.8333, c: 1/4 + 1/2 = 0.75, b: 1/3, d: 1/4
    assert [(r["path"], round(r["score"], 4), r["rank"]) for r in fused] == [("a", 0.8333, 1), ("c", 0.75, 2), ("b", 0.3333, 3)]
    # through the component: the x list (x, xy, ...) and the xy list (xy, y, x, ...) fused
    # xy: 1/62 + 1/61 = 0.03252, x: 1/61 + 1/63 = 0.03227, y: at most 1/63 + 1/62 = 0.03200
    assert _search([[1, 0, 0], [0.6, 0.8, 0]], k=2, fusion="rrf", rrf_k=60) == [("xy", 0.0325), ("x", 0.0323)]


def test_fusion_params_are_validated():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="needs 'weights'"):
        SearchParams(fusion="weighted")
    with pytest.raises(ValidationError, match="'weights' go with fusion 'weighted'"):
        SearchParams(weights=[1.0])
    with pytest.raises(ValidationError, match="not all 0"):
        SearchParams(fusion="weighted", weights=[0, 0])


def test_ensemble_rewrites_are_all_kept_and_shown(cli, tmp_path, tiny_models, gallery, gallery_index):
    pipeline = write_pipeline(
        tmp_path / "ens.yaml", tiny_models, rewrite={"temperature": 1.0, "n": 2, "seed": 3, "max_new_tokens": 6}
    )
    pipeline.write_text(
        pipeline.read_text().replace("prompt: cirevl-rewrite,", "prompt: [cirevl-rewrite, cirevl-rewrite-para1],")
    )
    res = cli("query", "-i", gallery_index, "--image", gallery / "img0001.jpg", "-t", "make it red", "-p", pipeline, "--json")
    assert res.exit_code == 0, res.stderr
    run = json.loads(res.stdout)
    rewrite, embed = run["steps"][1], run["steps"][2]
    assert len(rewrite["prompts"]) == 2 and len(rewrite["raw"]) == 4
    assert rewrite["outputs"]["sources"] == [
        {"template": "cirevl-rewrite", "sample": 1},
        {"template": "cirevl-rewrite", "sample": 2},
        {"template": "cirevl-rewrite-para1", "sample": 1},
        {"template": "cirevl-rewrite-para1", "sample": 2},
    ]
    assert [t["name"] for t in rewrite["templates"]] == ["cirevl-rewrite", "cirevl-rewrite-para1"]
    assert embed["prompts"] == rewrite["outputs"]["descriptions"]
    assert embed["outputs"]["query_vectors"] == "4 vector(s) of 32 floats"
    shown = cli("runs", "show", run["id"])
    for i in range(1, 5):
        assert f"description {i} (" in shown.stdout
    assert "sample 2" in shown.stdout


def test_ensemble_from_the_command_line(cli, gallery, gallery_index, tiny_pipeline):
    res = cli("query", "-i", gallery_index, "--image", gallery / "img0001.jpg", "-t", "make it red", "-p", tiny_pipeline,
              "--prompt", "rewrite=cirevl-rewrite-short", "--prompt", "rewrite=cirevl-rewrite-para2", "--json")
    assert res.exit_code == 0, res.stderr
    rewrite = json.loads(res.stdout)["steps"][1]
    assert [t["name"] for t in rewrite["templates"]] == ["cirevl-rewrite-short", "cirevl-rewrite-para2"]


def test_many_queries_run_as_one_batch(cli, tmp_path, gallery, gallery_index, tiny_pipeline, monkeypatch):
    from cirkit.engines.transformers_engine import TransformersEngine

    calls = []
    real = TransformersEngine.generate

    def counting(self, requests, params, on_batch=None):
        calls.append((self.model_id, len(requests)))
        return real(self, requests, params, on_batch)

    monkeypatch.setattr(TransformersEngine, "generate", counting)
    lines = [{"image": str(gallery / f"img{i:04d}.jpg"), "text": f"variant {i}", "id": f"q{i}"} for i in (1, 2, 4, 5)]
    queries = tmp_path / "queries.jsonl"
    queries.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    res = cli("query", "-i", gallery_index, "--queries", queries, "-p", tiny_pipeline, "--json")
    assert res.exit_code == 0, res.stderr
    runs = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["inputs"]["query_id"] for r in runs] == ["q1", "q2", "q4", "q5"]
    assert all(r["status"] == "ok" and len(r["results"]) == 10 for r in runs)
    # one call per generating step for the whole batch, not one per query
    assert [n for _, n in calls] == [4, 4]

    table = cli("query", "-i", gallery_index, "--queries", queries, "-p", tiny_pipeline)
    assert table.exit_code == 0 and "4 queries" in table.stdout


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"image": "a.jpg"}\n', "line 1: expected"),
        ("not json\n", "line 1: not JSON"),
        ("\n\n", "no queries"),
        ('{"image": "missing.jpg", "text": "red", "id": "x7"}\n', "query x7: reference image"),
    ],
)
def test_bad_queries_file(cli, tmp_path, gallery_index, tiny_pipeline, content, message):
    queries = tmp_path / "q.jsonl"
    queries.write_text(content)
    res = cli("query", "-i", gallery_index, "--queries", queries, "-p", tiny_pipeline)
    assert res.exit_code == 1 and message in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_image_and_queries_are_exclusive(cli, tmp_path, gallery, gallery_index):
    res = cli("query", "-i", gallery_index, "--queries", tmp_path / "q.jsonl", "--image", gallery / "img0001.jpg")
    assert res.exit_code == 1 and "not both" in res.stderr
    res = cli("query", "-i", gallery_index, "--text", "red")
    assert res.exit_code == 1 and "give --image and --text" in res.stderr
