"""Fusion of text and image evidence: WeiMoCIR weighting, prompt directional vectors, gallery-caption
scoring and the SEIZE editing increment, by hand on small vectors and end to end on tiny models."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cirkit.components.fuse import Fuse, FuseParams, Pdv, PdvParams, pdv_fusion, weighted_fusion
from cirkit.components.search import Search, SearchParams
from cirkit.gallery import GalleryIndex
from conftest import synthetic_index, write_pipeline

X, Y, Z = (np.eye(3, dtype=np.float32)[i] for i in range(3))


def test_weighted_fusion_by_hand():
    # 0.75 * x + 0.25 * y = (0.75, 0.25, 0), normalized: / sqrt(0.625) = (0.9487, 0.3162, 0)
    np.testing.assert_allclose(weighted_fusion(X, Y, 0.75), [0.9487, 0.3162, 0], atol=1e-4)
    np.testing.assert_allclose(weighted_fusion(X, Y, 1.0), X)
    np.testing.assert_allclose(weighted_fusion(X, Y, 0.0), Y)
    # the step: an ensemble of two text vectors is averaged first: (x + z) / |x + z| with the image y
    (result,) = Fuse(FuseParams(alpha=0.5)).run([{"text_vectors": np.stack([X, Z]), "image_vectors": Y[None]}])
    t = (X + Z) / np.sqrt(2)
    np.testing.assert_allclose(result.outputs["query_vectors"][0], (t + Y) / np.linalg.norm(t + Y), atol=1e-6)
    assert result.outputs["query_vectors"].shape == (1, 3)
    assert "cosine of the fused query with text 0.707, image 0.707" in result.notes[0]


def test_pdv_by_hand():
    # t = x (rewrite), c = y (caption), i = z (image): d = t - c = (1, -1, 0)
    # text  = normalize(x + 0.5 d) = (1.5, -0.5, 0) / 1.5811 = (0.9487, -0.3162, 0)
    # image = normalize(z + 1.0 d) = (1, -1, 1) / 1.7321 = (0.5774, -0.5774, 0.5774)
    # q = normalize(0.5 text + 0.5 image) = (0.7630, -0.4468, 0.2887) / 0.9302 = (0.8203, -0.4803, 0.3104)
    q = pdv_fusion(X, Y, Z, alpha_text=0.5, alpha_image=1.0, beta=0.5)
    np.testing.assert_allclose(q, [0.8203, -0.4803, 0.3104], atol=1e-4)
    # from the caption: text = normalize(y + 0.5 d) = (0.5, 0.5, 0) / 0.7071; beta 1 keeps the text alone
    q = pdv_fusion(X, Y, Z, alpha_text=0.5, alpha_image=1.0, beta=1.0, text_from="caption")
    np.testing.assert_allclose(q, [0.7071, 0.7071, 0], atol=1e-4)
    # alpha_text 0, beta 1: the rewrite alone; beta 0, alpha_image 0: the image alone
    np.testing.assert_allclose(pdv_fusion(X, Y, Z, alpha_text=0, alpha_image=1, beta=1), X, atol=1e-6)
    np.testing.assert_allclose(pdv_fusion(X, Y, Z, alpha_text=1, alpha_image=0, beta=0), Z, atol=1e-6)
    params = PdvParams(alpha_text=0.5, alpha_image=1.0, beta=0.5)
    (result,) = Pdv(params).run([{"text_vectors": X[None], "caption_vectors": Y[None], "image_vectors": Z[None]}])
    np.testing.assert_allclose(result.outputs["query_vectors"][0], [0.8203, -0.4803, 0.3104], atol=1e-4)
    assert "|direction| 1.414" in result.notes[0]


def test_editing_increment_by_hand():
    # image scores for q = x: a 1.0, b 0.8, c 0.0, d 0.6; for the reference caption r = b: a 0.8, b 1.0, c 0.6, d 0.48
    # delta = s(q) - s(r): a 0.2, b -0.2, c -0.6, d 0.12; positive 1, negative 0.5:
    # a 1 + 0.2 = 1.2, b 0.8 - 0.1 = 0.7, c 0 - 0.3 = -0.3, d 0.6 + 0.12 = 0.72
    gallery = {"a": [1, 0, 0], "b": [0.8, 0.6, 0], "c": [0, 1, 0], "d": [0.6, 0, 0.8]}
    plain = Search(SearchParams(k=4), index=synthetic_index(gallery)).run([{"query_vectors": X[None]}])[0]
    assert [h["path"] for h in plain.outputs["results"]] == ["a", "b", "d", "c"]
    params = SearchParams(k=4, increment={"positive": 1.0, "negative": 0.5})
    (result,) = Search(params, index=synthetic_index(gallery)).run([{"query_vectors": X[None], "reference_vectors": np.array([[0.8, 0.6, 0]])}])
    assert [(h["path"], round(h["score"], 4)) for h in result.outputs["results"]] == [("a", 1.2), ("d", 0.72), ("b", 0.7), ("c", -0.3)]
    d = result.outputs["results"][1]
    assert d["rank"] == 2 and d["scores"] == pytest.approx({"image": 0.6, "increment": 0.12}, abs=1e-6)
    assert "editing increment: positive 1.0, negative 0.5" in result.notes


@pytest.mark.parametrize(
    "params, message",
    [
        ({"fuse": {"alpha": 1.5}}, "field 'params.alpha': Input should be less than or equal to 1"),
        ({"pdv": {"beta": -0.1}}, "field 'params.beta': Input should be greater than or equal to 0"),
        ({"pdv": {"alpha_image": 11}}, "field 'params.alpha_image': Input should be less than or equal to 10"),
        ({"search": {"gallery_captions": 2}}, "field 'params.gallery_captions': Input should be less than or equal to 1"),
        ({"search": {"increment": {"positive": -1}}}, "field 'params.increment.positive': Input should be greater than or equal to 0"),
        ({"search": {"fusion": "rrf", "gallery_captions": 0.3}}, "fusion 'rrf' ranks, it has no scores to re-score"),
        ({"search": {"increment": {"positive": 1}}, "no_reference": True}, "field 'params.increment' scores against the reference caption: wire"),
    ],
)
def test_out_of_range_weights_are_refused_at_validation(tiny_models, tmp_path, cli, params, message):
    step_params = {name: value for name, value in params.items() if name in ("fuse", "pdv", "search")}
    path = _fusion_pipeline(tmp_path / "p.yaml", tiny_models, reference=not params.get("no_reference"), **step_params)
    result = cli("pipelines", "validate", path)
    assert result.exit_code != 0
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_pdv_step_without_caption_vectors_wired_is_refused(tiny_models, tmp_path):
    from cirkit.errors import CirkitError
    from cirkit.pipelines import load_pipeline

    text = _fusion_pipeline(tmp_path / "p.yaml", tiny_models).read_text().replace(", inputs: {caption_vectors: embed_caption.query_vectors}", "")
    (tmp_path / "q.yaml").write_text(text)
    with pytest.raises(CirkitError, match=r"step 'pdv': field 'inputs.caption_vectors': a pdv step needs its input 'caption_vectors' \(vectors\) wired"):
        load_pipeline(tmp_path / "q.yaml")


def test_fusion_steps_end_to_end_with_their_trace(tiny_models, gallery, gallery_index, tmp_path):
    from cirkit.api import query

    path = _fusion_pipeline(tmp_path / "p.yaml", tiny_models, search={"k": 10, "increment": {"positive": 0.5, "negative": 0.5}})
    run = query(gallery / "img0001.jpg", "make it blue", gallery_index, pipeline=path, k=5, data_dir=tmp_path / "data")
    steps = {s["name"]: s for s in run["steps"]}
    assert list(steps) == ["caption", "rewrite", "embed_caption", "embed", "embed_image", "pdv", "search"]
    assert steps["embed_caption"]["prompts"] == [steps["caption"]["outputs"]["caption"]]
    image_vector = np.asarray(steps["embed_image"]["outputs"]["image_vectors"])[0]
    # the reference image's vector is the one the index holds for the same file
    index = GalleryIndex.open(gallery_index)
    np.testing.assert_allclose(image_vector, index.vectors[index.paths.index("img0001.jpg")], atol=1e-5)
    t = np.asarray(steps["embed"]["outputs"]["query_vectors"])[0]
    c = np.asarray(steps["embed_caption"]["outputs"]["query_vectors"])[0]
    expected = pdv_fusion(t, c, image_vector, alpha_text=0.5, alpha_image=1.0, beta=0.7)
    np.testing.assert_allclose(np.asarray(steps["pdv"]["outputs"]["query_vectors"])[0], expected, atol=1e-5)
    hits = run["results"]
    assert len(hits) == 5 and all(set(h["scores"]) == {"image", "increment"} for h in hits)
    for h in hits:  # score = s + 0.5 * max(d, 0) - 0.5 * max(-d, 0) = s + 0.5 d
        assert h["score"] == pytest.approx(h["scores"]["image"] + 0.5 * h["scores"]["increment"], abs=1e-5)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)


def test_gallery_captions_at_index_time_and_in_scoring(tiny_models, gallery, tmp_path, cli):
    from cirkit.api import query
    from cirkit.gallery.captions import GalleryCaptions

    pipeline = write_pipeline(tmp_path / "tiny.yaml", tiny_models)
    out = tmp_path / "idx"
    first = cli("index", gallery, "--out", out, "--pipeline", pipeline, "--captions", pipeline)
    assert first.exit_code == 0, first.stderr
    assert "captioned 30 gallery images (0 reused, 0 failed)" in first.stdout
    again = cli("index", gallery, "--out", out, "--pipeline", pipeline, "--captions", pipeline)
    assert again.exit_code == 0 and "captioned 0 gallery images (30 reused, 0 failed)" in again.stdout
    index = GalleryIndex.open(out)
    captions = GalleryCaptions.of(index)
    assert len(captions.captions) == 30 and all(len(c) == 1 and c[0] for c in captions.captions)
    assert captions.vectors.shape[:2] == (30, 1) and captions.per_image == 1
    np.testing.assert_allclose(np.linalg.norm(captions.vectors, axis=-1), 1.0, atol=1e-5)

    weighted = write_pipeline(tmp_path / "gc.yaml", tiny_models).read_text().replace("params: {k: 50}", "params: {k: 50, gallery_captions: 0.4}")
    (tmp_path / "gc.yaml").write_text(weighted)
    run = query(gallery / "img0002.jpg", "make it red", out, pipeline=tmp_path / "gc.yaml", k=30, data_dir=tmp_path / "data")
    q = np.asarray(run["steps"][2]["outputs"]["query_vectors"])[0]
    for hit in run["results"]:
        row = index.paths.index(hit["path"])
        expected = 0.6 * float(index.vectors[row] @ q) + 0.4 * float(captions.vectors[row, 0] @ q)
        assert hit["score"] == pytest.approx(expected, abs=1e-5)
        assert hit["scores"]["caption"] == pytest.approx(float(captions.vectors[row, 0] @ q), abs=1e-5)
    assert [h["score"] for h in run["results"]] == sorted((h["score"] for h in run["results"]), reverse=True)


def test_gallery_caption_scoring_on_an_index_without_captions_is_one_line(tiny_models, gallery, gallery_index, tmp_path, cli):
    weighted = write_pipeline(tmp_path / "gc.yaml", tiny_models).read_text().replace("params: {k: 50}", "params: {k: 50, gallery_captions: 0.4}")
    (tmp_path / "gc.yaml").write_text(weighted)
    result = cli("query", "--pipeline", tmp_path / "gc.yaml", "--index", gallery_index, "--image", gallery / "img0002.jpg", "--text", "red")
    assert result.exit_code != 0
    assert "has no gallery captions: add them with `cirkit index IMAGES --out" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def _fusion_pipeline(path, models, *, reference: bool = True, fuse=None, pdv=None, search=None):
    """caption -> rewrite -> embed caption, rewrite and image -> pdv -> search (with the tiny models)."""
    search = {"k": 10, **(search or {})}
    wiring = ", inputs: {reference_vectors: embed_caption.query_vectors}" if reference else ""
    extra = f"\n  - {{name: fuse, kind: fuse, params: {json.dumps(fuse)}}}" if fuse is not None else ""
    path.write_text(
        f"""name: tiny-fusion
models:
  captioner: {{type: vlm, id: "{models.blip2}"}}
  llm: {{type: llm, id: "{models.llm}"}}
  clip: {{type: clip, name: "{models.clip_config}", pretrained: "{models.clip_checkpoint}"}}
steps:
  - {{name: caption, kind: caption, model: captioner, prompt: cirevl-caption, params: {{max_new_tokens: 8}}}}
  - {{name: rewrite, kind: rewrite, model: llm, prompt: cirevl-rewrite, params: {{max_new_tokens: 12}}}}
  - {{name: embed_caption, kind: embed, model: clip, inputs: {{texts: caption}}}}
  - {{name: embed, kind: embed, model: clip}}
  - {{name: embed_image, kind: embed_image, model: clip}}
  - {{name: pdv, kind: pdv, params: {json.dumps(pdv or {})}, inputs: {{caption_vectors: embed_caption.query_vectors}}}}{extra}
  - {{name: search, kind: search, params: {json.dumps(search)}{wiring}}}
"""
    )
    return path
