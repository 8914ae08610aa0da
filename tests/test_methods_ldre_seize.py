"""LDRE and SEIZE as the authors' code computes them: 15 sampled captions per reference, one edit
each, and the stored vectors and scores of runs on tiny models equal the formulas recomputed here
with plain numpy (mean of raw CLIP features; LDRE's adaptive weights; SEIZE's editing increment)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cirkit.gallery import GalleryIndex
from test_methods_pdv_weimocir import overrides, unit, vectors


def step(run, name):
    return next(s for s in run["steps"] if s["name"] == name)


def ranked(index, score, hits):
    expected = dict(zip(index.paths, score))
    assert [h["path"] for h in hits] == sorted(expected, key=lambda p: -expected[p])[: len(hits)]
    assert all(h["score"] == pytest.approx(expected[h["path"]], abs=1e-5) for h in hits)


def test_ldre_samples_fifteen_captions_edits_each_and_averages_raw_features(tiny_models, gallery, gallery_index, tmp_path):
    from cirkit.api import query

    run = query(gallery / "img0005.jpg", "make it brighter", gallery_index, pipeline="ldre", k=30,
                data_dir=tmp_path / "data", model_overrides=overrides(tiny_models))
    caption, rewrite = step(run, "caption"), step(run, "rewrite")
    captions = caption["outputs"]["captions"]
    assert len(captions) == 15 and caption["outputs"]["caption"] == captions[0]
    assert (caption["params"]["n"], caption["params"]["top_p"], caption["params"]["temperature"], caption["params"]["seed"]) == (15, 0.9, 1.0, 0)
    assert [s["sample"] for s in caption["outputs"]["caption_sources"]] == list(range(1, 16))
    # one rewrite per caption, each prompt carrying its own caption, in caption order
    assert len(rewrite["prompts"]) == 15 and len(rewrite["outputs"]["descriptions"]) == 15
    assert all(c in p[-1]["content"] for c, p in zip(captions, rewrite["prompts"]))
    assert [s["caption"] for s in rewrite["outputs"]["sources"]] == list(range(1, 16))
    edits = vectors(run, "embed")
    assert edits.shape[0] == 15 and not np.allclose(np.linalg.norm(edits, axis=1), 1, atol=1e-3)  # raw features
    q = unit(edits.mean(axis=0))  # LDRE on CIRR: the mean of the raw features, normalized
    np.testing.assert_allclose(vectors(run, "ensemble")[0], q, atol=1e-5)
    index = GalleryIndex.open(gallery_index)
    ranked(index, np.asarray(index.vectors, dtype=np.float64) @ q, run["results"])


def test_ldre_adaptive_weights_over_the_batch(tiny_models, gallery, gallery_index, tmp_path):
    from cirkit.api import query_many
    from cirkit.pipelines.runner import Query
    from cirkit.pipelines.spec import builtin_path

    text = builtin_path("ldre").read_text().replace("mode: {by_benchmark: {circo: adaptive, default: mean}}", "mode: adaptive")
    (tmp_path / "ldre-circo.yaml").write_text(text)
    queries = [Query(gallery / "img0002.jpg", "make it red"), Query(gallery / "img0010.jpg", "add a stripe"),
               Query(gallery / "img0013.jpg", "more blue")]
    runs = query_many(queries, gallery_index, pipeline=tmp_path / "ldre-circo.yaml", k=30, data_dir=tmp_path / "data",
                      model_overrides=overrides(tiny_models), raise_on_failure=True)
    index = GalleryIndex.open(gallery_index)
    g = np.asarray(index.vectors, dtype=np.float64)
    e = np.stack([unit(vectors(run, "embed")) for run in runs])  # (queries, 15, dim)
    b = np.stack([unit(vectors(run, "embed_captions")) for run in runs])
    v = np.zeros(15)
    for i in range(15):
        drop = np.maximum(b[:, i] @ g.T - e[:, i] @ g.T, 0)  # (queries, gallery)
        v[i] = np.sort(drop, axis=1)[:, -5:].sum()
    z = np.exp(v / v.max() / 0.04)
    w = z / z.sum()
    for r, run in enumerate(runs):
        q = unit((w[:, None] * e[r]).sum(axis=0))
        np.testing.assert_allclose(vectors(run, "ensemble")[0], q, atol=1e-5)
        ranked(index, g @ q, run["results"])
        assert f"over a batch of 3 queries: {w[0]:.3f}" in step(run, "ensemble")["notes"][0]


def test_seize_editing_increment(tiny_models, gallery, gallery_index, tmp_path):
    from cirkit.api import query

    run = query(gallery / "img0008.jpg", "make it smaller", gallery_index, pipeline="seize", k=30,
                data_dir=tmp_path / "data", model_overrides=overrides(tiny_models))
    after, before = vectors(run, "embed"), vectors(run, "embed_captions")
    assert after.shape[0] == before.shape[0] == 15
    a, b = unit(after.mean(axis=0)), unit(before.mean(axis=0))
    index = GalleryIndex.open(gallery_index)
    g = np.asarray(index.vectors, dtype=np.float64)
    s_after, s_before = g @ a, g @ b
    d = s_after - s_before
    score = s_after + 2.1 * np.minimum(d, 0) + 0.13 * np.maximum(d, 0)  # CIRCO ViT-L/14 defaults
    hits = run["results"]
    assert len(hits) == 30
    ranked(index, score, hits)
    for h in hits:
        row = index.paths.index(h["path"])
        assert h["scores"] == pytest.approx({"image": s_after[row], "increment": d[row]}, abs=1e-5)


def test_seize_and_ldre_defaults_per_benchmark():
    from cirkit.pipelines import load_pipeline

    inc = load_pipeline("seize", benchmark="cirr").step("search").params.increment
    assert (inc.positive, inc.negative) == (0.22, 1.0)
    inc = load_pipeline("seize", benchmark="circo").step("search").params.increment
    assert (inc.positive, inc.negative) == (0.13, 2.1)
    assert load_pipeline("ldre", benchmark="circo").step("ensemble").params.mode == "adaptive"
    assert load_pipeline("ldre", benchmark="cirr").step("ensemble").params.mode == "mean"


@pytest.mark.parametrize(
    "pipeline, old, new, message",
    [
        ("ldre", "n: 15,", "n: 0,", "field 'params.n': Input should be greater than or equal to 1"),
        ("ldre", "n: 15,", "n: 65,", "field 'params.n': Input should be less than or equal to 64"),
        ("ldre", "temperature: 0.04", "temperature: 0", "field 'params.temperature': Input should be greater than 0"),
        ("ldre", "top_k: 5", "top_k: 0", "field 'params.top_k': Input should be greater than or equal to 1"),
        ("ldre", "    inputs: {caption_vectors: embed_captions.query_vectors}\n    params:\n      mode: {by_benchmark: {circo: adaptive, default: mean}}",
         "    params:\n      mode: adaptive", "mode 'adaptive' compares each edited caption with its caption: wire their vectors"),
        ("seize", "positive: 0.13, negative: 2.1", "positive: 0.13, negative: -2.1",
         "field 'params.increment.negative': Input should be greater than or equal to 0"),
        ("seize", "temperature: 1.0, top_p: 0.9, n: 15", "temperature: 0, top_p: 0.9, n: 15",
         "n > 1 needs temperature > 0 (samples) or num_beams >= n (top beams)"),
    ],
)
def test_bad_settings_are_one_line(tmp_path, pipeline, old, new, message):
    from cirkit.errors import CirkitError
    from cirkit.pipelines import load_pipeline
    from cirkit.pipelines.spec import builtin_path

    text = builtin_path(pipeline).read_text()
    assert old in text
    (tmp_path / "p.yaml").write_text(text.replace(old, new, 1))
    with pytest.raises(CirkitError) as err:
        load_pipeline(tmp_path / "p.yaml")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_ldre_pdv_moves_the_captions_mean_along_the_ldre_query(tiny_models, gallery, gallery_index, tmp_path):
    from cirkit.api import query

    run = query(gallery / "img0011.jpg", "make it round", gallery_index, pipeline="ldre-pdv", k=30,
                data_dir=tmp_path / "data", model_overrides=overrides(tiny_models))
    t = unit(vectors(run, "embed").mean(axis=0))  # LDRE's query (mean mode outside a benchmark)
    np.testing.assert_allclose(vectors(run, "ensemble")[0], t, atol=1e-5)
    c = unit(vectors(run, "embed_captions").mean(axis=0))
    i = vectors(run, "embed_image")[0]
    d = t - c
    q = unit(0.25 * unit(i + 1.4 * d) + 0.75 * unit(c + 1.2 * d))
    np.testing.assert_allclose(vectors(run, "pdv")[0], q, atol=1e-5)
    index = GalleryIndex.open(gallery_index)
    ranked(index, np.asarray(index.vectors, dtype=np.float64) @ q, run["results"])


@pytest.mark.parametrize("pipeline", ["cirevl-pdv", "ldre", "ldre-pdv", "seize"])
def test_methods_run_from_the_command_line_on_tiny_models(tiny_models, gallery, gallery_index, cli, pipeline):
    flags = [f"--model={name}={json.dumps(entry)}" for name, entry in overrides(tiny_models).items()]
    result = cli("query", "--pipeline", pipeline, "--index", gallery_index, "--image", gallery / "img0001.jpg",
                 "--text", "make it red", "-k", "3", *flags)
    assert result.exit_code == 0, result.stderr
    assert "img0" in result.stdout
