"""GenQR with relevance feedback: the first search's top results, as their gallery captions, go back
to the LLM with the query; its refined descriptions are searched again. Everything is in the trace."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cirkit.gallery import GalleryIndex
from test_methods_ldre_seize import ranked, step
from test_methods_pdv_weimocir import overrides, unit, vectors


@pytest.fixture(scope="module")
def captioned_index(tiny_models, gallery, tmp_path_factory):
    from cirkit.api import index_folder
    from cirkit.engines import ModelPool
    from cirkit.pipelines import load_pipeline
    from cirkit.pipelines.gallery_captions import caption_gallery

    out = tmp_path_factory.mktemp("feedback") / "idx"
    index_folder(gallery, out, pipeline="genqr-feedback", model_overrides=overrides(tiny_models))
    caption_gallery(out, load_pipeline("genqr-feedback", model_overrides=overrides(tiny_models)), ModelPool(), progress=False)
    return out


def test_feedback_documents_prompts_answers_and_the_second_search(tiny_models, gallery, captioned_index, tmp_path, cli):
    from cirkit.api import query

    run = query(gallery / "img0004.jpg", "make it purple", captioned_index, pipeline="genqr-feedback", k=30,
                data_dir=tmp_path / "data", model_overrides=overrides(tiny_models))
    assert [s["name"] for s in run["steps"]] == ["caption", "rewrite", "embed", "search", "feedback", "embed_feedback", "search_feedback"]
    first = step(run, "search")["outputs"]["results"]
    feedback = step(run, "feedback")
    active = json.loads((captioned_index / "captions" / "active.json").read_text())
    lines = [json.loads(x) for x in (captioned_index / "captions" / active["captions_file"]).read_text().splitlines()]
    by_hash = {x["sha256"]: x["captions"] for x in lines}
    index = GalleryIndex.open(captioned_index)
    sha_of = {e["path"]: e["sha256"] for e in index.manifest["entries"]}
    documents = ["; ".join(by_hash[sha_of[h["path"]]]) for h in first[:5]]
    assert feedback["outputs"]["documents"] == documents
    # one prompt (one template), sampled 3 times; the prompt carries the query, the first rewrite and every document
    (prompt,) = feedback["prompts"]
    content = prompt[-1]["content"]
    assert "make it purple" in content and step(run, "rewrite")["outputs"]["description"] in content
    assert all(f"{r + 1}. {doc}" in content for r, doc in enumerate(documents))
    assert len(feedback["raw"]) == 3 and len(feedback["outputs"]["descriptions"]) == 3
    assert step(run, "embed_feedback")["prompts"] == feedback["outputs"]["descriptions"]
    q = unit(vectors(run, "embed_feedback").mean(axis=0))
    ranked(index, np.asarray(index.vectors, dtype=np.float64) @ q, run["results"])

    shown = cli("runs", "show", run["id"])
    assert shown.exit_code == 0, shown.stderr
    flat = " ".join(shown.stdout.replace("│", " ").split())
    assert "5. feedback (feedback)" in flat and all(" ".join(doc.split()) in flat for doc in documents)


def test_feedback_on_an_index_without_gallery_captions_is_one_line(tiny_models, gallery, gallery_index, tmp_path):
    from cirkit.api import query
    from cirkit.errors import CirkitError

    with pytest.raises(CirkitError) as err:
        query(gallery / "img0001.jpg", "make it red", gallery_index, pipeline="genqr-feedback", data_dir=tmp_path / "data",
              model_overrides=overrides(tiny_models))
    message = str(err.value)
    assert "relevance feedback reads the gallery captions of the top results" in message and "has no gallery captions" in message
    assert "\n" not in message


@pytest.mark.parametrize("old, new, message", [
    ("k: 5,", "k: 0,", "field 'params.k': Input should be greater than or equal to 1"),
    ("k: 5,", "k: 51,", "field 'params.k': Input should be less than or equal to 50"),
])
def test_bad_feedback_settings_are_one_line(tmp_path, old, new, message):
    from cirkit.errors import CirkitError
    from cirkit.pipelines import load_pipeline
    from cirkit.pipelines.spec import builtin_path

    text = builtin_path("genqr-feedback").read_text()
    (tmp_path / "p.yaml").write_text(text.replace(old, new, 1))
    with pytest.raises(CirkitError) as err:
        load_pipeline(tmp_path / "p.yaml")
    assert message in str(err.value) and "\n" not in str(err.value)
