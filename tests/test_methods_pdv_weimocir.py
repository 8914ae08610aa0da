"""PDV and WeiMoCIR as their papers and the authors' code compute them: the stored vectors and
scores of runs on tiny models equal the formulas recomputed here with plain numpy."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cirkit.gallery import GalleryIndex


def unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def overrides(models, llm=True):
    """The `--model` overrides that put a built-in pipeline on the tiny models."""
    tiny = {
        "captioner": {"id": str(models.blip2), "dtype": "float32"},
        "llm": {"id": str(models.llm), "dtype": "float32"},
        "clip": {"name": str(models.clip_config), "pretrained": str(models.clip_checkpoint)},
    }
    return tiny if llm else {k: v for k, v in tiny.items() if k != "llm"}


def vectors(run, step, output=None):
    found = next(s for s in run["steps"] if s["name"] == step)
    output = output or ("image_vectors" if found["kind"] == "embed_image" else "query_vectors")
    return np.asarray(found["outputs"][output], dtype=np.float64)


def test_cirevl_pdv_is_the_papers_formula_with_its_defaults(tiny_models, gallery, gallery_index, tmp_path):
    from cirkit.api import query

    run = query(gallery / "img0004.jpg", "make it green", gallery_index, pipeline="cirevl-pdv", k=30,
                data_dir=tmp_path / "data", model_overrides=overrides(tiny_models))
    c, t, i = vectors(run, "embed_caption")[0], vectors(run, "embed")[0], vectors(run, "embed_image")[0]
    d = t - c
    text = unit(c + 1.2 * d)  # the caption moved along the direction (alpha_T 1.2)
    image = unit(i + 1.4 * d)  # the reference image moved along it (alpha_I 1.4)
    q = unit(0.25 * image + 0.75 * text)  # beta 0.75 for the text
    np.testing.assert_allclose(vectors(run, "pdv")[0], q, atol=1e-5)
    index = GalleryIndex.open(gallery_index)
    expected = {p: float(v @ q) for p, v in zip(index.paths, np.asarray(index.vectors, dtype=np.float64))}
    hits = run["results"]
    assert [h["path"] for h in hits] == sorted(expected, key=lambda p: -expected[p])[:30]
    assert all(h["score"] == pytest.approx(expected[h["path"]], abs=1e-5) for h in hits)


@pytest.mark.parametrize("family, values", [(None, (1.2, 1.4, 0.75)), ("cirr", (1.2, 1.4, 0.75)), ("circo", (1.2, 1.4, 0.75)),
                                               ("fashioniq", (1.3, 1.0, 0.55))])
def test_pdv_defaults_per_benchmark(family, values):
    from cirkit.pipelines import load_pipeline

    for name in ("cirevl-pdv", "ldre-pdv"):
        p = load_pipeline(name, benchmark=family).step("pdv").params
        assert (p.alpha_text, p.alpha_image, p.beta, p.text_from) == (*values, "caption")


@pytest.fixture(scope="module")
def weimocir_index(tiny_models, gallery, tmp_path_factory):
    from cirkit.api import index_folder
    from cirkit.engines import ModelPool
    from cirkit.pipelines import load_pipeline
    from cirkit.pipelines.gallery_captions import caption_gallery

    out = tmp_path_factory.mktemp("weimocir") / "idx"
    pipeline = load_pipeline("weimocir", model_overrides=overrides(tiny_models, llm=False))
    index_folder(gallery, out, pipeline="weimocir", model_overrides=overrides(tiny_models, llm=False))
    report = caption_gallery(out, pipeline, ModelPool(), progress=False)
    assert report.count == 30 and not report.failed
    return out


def test_weimocir_gallery_keeps_three_captions_per_image_and_resumes(tiny_models, weimocir_index):
    from cirkit.engines import ModelPool
    from cirkit.pipelines import load_pipeline
    from cirkit.pipelines.gallery_captions import caption_gallery

    active = json.loads((weimocir_index / "captions" / "active.json").read_text())
    assert active["per_image"] == 3 and active["templates"] == ["caption-subject", "caption-scene", "caption-attributes"]
    lines = [json.loads(x) for x in (weimocir_index / "captions" / active["captions_file"]).read_text().splitlines()]
    assert len(lines) == 30 and all(len(x["captions"]) == 3 for x in lines)
    with np.load(weimocir_index / "captions" / active["vectors_file"]) as data:
        assert data["vectors"].shape[:2] == (30, 3)
    again = caption_gallery(weimocir_index, load_pipeline("weimocir", model_overrides=overrides(tiny_models, llm=False)), ModelPool(), progress=False)
    assert (again.captioned, again.reused) == (0, 30)


def test_weimocir_is_the_authors_formula(tiny_models, gallery, weimocir_index, tmp_path):
    from cirkit.api import query

    run = query(gallery / "img0007.jpg", "make it darker", weimocir_index, pipeline="weimocir", k=30,
                data_dir=tmp_path / "data", model_overrides=overrides(tiny_models, llm=False))
    m, r, i = vectors(run, "embed_text")[0], vectors(run, "embed_captions"), vectors(run, "embed_image")[0]
    assert r.shape[0] == 3 and abs(np.linalg.norm(m) - 1) > 1e-3 and abs(np.linalg.norm(i) - 1) > 1e-3  # raw features
    index = GalleryIndex.open(weimocir_index)
    images = np.asarray(index.vectors, dtype=np.float64)
    # the raw reference vector is CLIP's: normalized, it is the one the index holds for the same file
    np.testing.assert_allclose(unit(i), images[index.paths.index("img0007.jpg")], atol=1e-5)
    q = unit(0.2 * i + 0.8 * m)
    q_k = unit(0.2 * r + 0.8 * m)
    np.testing.assert_allclose(vectors(run, "fuse")[0], q, atol=1e-5)
    np.testing.assert_allclose(vectors(run, "fuse", "caption_queries"), q_k, atol=1e-5)
    active = json.loads((weimocir_index / "captions" / "active.json").read_text())
    with np.load(weimocir_index / "captions" / active["vectors_file"]) as data:
        by_hash = dict(zip(data["hashes"].tolist(), data["vectors"].astype(np.float64)))
    captions = np.stack([by_hash[e["sha256"]] for e in index.manifest["entries"]])  # (30, 3, dim)
    score = 0.9 * images @ q + 0.1 * np.mean([captions[:, k] @ q_k[k] for k in range(3)], axis=0)
    expected = dict(zip(index.paths, score))
    hits = run["results"]
    assert len(hits) == 30
    assert [h["path"] for h in hits] == sorted(expected, key=lambda p: -expected[p])
    assert all(h["score"] == pytest.approx(expected[h["path"]], abs=1e-5) for h in hits)


def test_weimocir_on_an_index_without_gallery_captions_is_one_line(tiny_models, gallery, gallery_index, tmp_path):
    from cirkit.api import query
    from cirkit.errors import CirkitError

    with pytest.raises(CirkitError) as err:
        query(gallery / "img0001.jpg", "make it red", gallery_index, pipeline="weimocir", data_dir=tmp_path / "data",
              model_overrides=overrides(tiny_models, llm=False))
    assert "has no gallery captions: add them with `cirkit index IMAGES --out" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "change, message",
    [
        ("params: {alpha: 0.8, normalize_parts: false}|params: {alpha: 1.2, normalize_parts: false}",
         "field 'params.alpha': Input should be less than or equal to 1"),
        ("gallery_captions: 0.1,|gallery_captions: -0.1,", "field 'params.gallery_captions': Input should be greater than or equal to 0"),
        ("gallery_captions: 0.1,|gallery_captions: 0,", "input 'caption_queries' is scored against gallery captions: set params.gallery_captions"),
        ("params: {normalize: false}|params: {normalize: sometimes}", "field 'params.normalize': Input should be a valid boolean"),
    ],
)
def test_bad_weimocir_settings_are_one_line(tmp_path, change, message):
    from cirkit.pipelines import load_pipeline
    from cirkit.errors import CirkitError
    from cirkit.pipelines.spec import builtin_path

    old, new = change.split("|")
    text = builtin_path("weimocir").read_text()
    assert old in text
    (tmp_path / "w.yaml").write_text(text.replace(old, new, 1))
    with pytest.raises(CirkitError) as err:
        load_pipeline(tmp_path / "w.yaml")
    assert message in str(err.value) and "\n" not in str(err.value)
