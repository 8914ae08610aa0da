"""The transformers engine on tiny local models: batched generation, chat templates, images."""

from __future__ import annotations

import pytest
from PIL import Image

from cirkit.engines import GenerationParams, GenerationRequest, load_model
from cirkit.errors import CirkitError
from cirkit.pipelines.spec import ModelSpec


def _user(text):
    return [{"role": "user", "content": text}]


def test_llm_batch_equals_one_at_a_time(tiny_models):
    engine = load_model(ModelSpec(type="llm", id=str(tiny_models.llm)))
    prompts = ["a red dress", "a small blue circle on a white background and more words", "make it green"]
    params = GenerationParams(max_new_tokens=6, batch_size=8)
    batched = [g for (g,) in engine.generate([GenerationRequest(_user(p)) for p in prompts], params)]
    single = [engine.generate([GenerationRequest(_user(p))], params)[0][0] for p in prompts]
    assert [g.text for g in batched] == [g.text for g in single]
    assert all(g.text and g.finish_reason == "length" for g in batched)
    info = engine.describe()
    assert info["engine"] == "transformers" and info["model"] == str(tiny_models.llm) and info["device"] == "cpu"


def test_batches_report_progress_and_keep_order(tiny_models):
    engine = load_model(ModelSpec(type="llm", id=str(tiny_models.llm)))
    prompts = [("word " * n).strip() for n in (5, 1, 3, 2, 4)]
    seen = []
    params = GenerationParams(max_new_tokens=3, batch_size=2)
    out = engine.generate([GenerationRequest(_user(p)) for p in prompts], params, on_batch=seen.append)
    assert seen == [2, 2, 1]
    alone = engine.generate([GenerationRequest(_user(prompts[0]))], params)
    assert out[0][0].text == alone[0][0].text


def test_n_samples_per_request(tiny_models):
    engine = load_model(ModelSpec(type="llm", id=str(tiny_models.llm)))
    requests = [GenerationRequest(_user("a red dress")), GenerationRequest(_user("make it blue"))]
    sampled = engine.generate(requests, GenerationParams(max_new_tokens=6, n=3, temperature=1.0, seed=1))
    assert [len(x) for x in sampled] == [3, 3]
    assert len({g.text for g in sampled[0]}) > 1  # samples differ
    again = engine.generate(requests, GenerationParams(max_new_tokens=6, n=3, temperature=1.0, seed=1))
    assert [[g.text for g in x] for x in again] == [[g.text for g in x] for x in sampled]  # the seed fixes them
    beams = engine.generate(requests, GenerationParams(max_new_tokens=4, n=2, num_beams=2))
    assert [len(x) for x in beams] == [2, 2]


def test_n_without_sampling_or_beams_is_rejected():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="n > 1 needs temperature > 0"):
        GenerationParams(n=2)


@pytest.mark.parametrize("which", ["blip", "blip2", "qwen2vl"])
def test_vlm_captions_images_in_batches(tiny_models, tmp_path, which):
    if which == "blip":
        from tiny_models import build_tiny_blip

        path = build_tiny_blip(tmp_path / "blip")
    else:
        path = getattr(tiny_models, which)
    engine = load_model(ModelSpec(type="vlm", id=str(path)))
    images = [Image.new("RGB", (64, 48), (200, 30, 30)), Image.new("RGB", (30, 30), (20, 40, 220))]
    params = GenerationParams(max_new_tokens=5, num_beams=2)
    requests = [GenerationRequest(_user("Describe the image."), image=im) for im in images]
    batched = [g for (g,) in engine.generate(requests, params)]
    single = [engine.generate([r], params)[0][0] for r in requests]
    assert [g.text for g in batched] == [g.text for g in single]
    assert all(g.text for g in batched)
    with pytest.raises(CirkitError, match="needs an image"):
        engine.generate([GenerationRequest(_user("no image"))], params)


def test_missing_model_is_one_clear_error(tmp_path):
    with pytest.raises(CirkitError, match="cannot load model"):
        load_model(ModelSpec(type="llm", id=str(tmp_path / "empty-dir")))
