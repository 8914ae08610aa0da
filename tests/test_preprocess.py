"""CLIP image preprocessing: targetpad against an independent re-computation, and the index's refusal of
a query embedded with another preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cirkit.engines.open_clip_engine import ClipModel
from cirkit.errors import CirkitError

MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)

# (width, height): wide, tall, square, just under the ratio, at it, barely over it (pads 0), over it, odd sizes
SIZES = [(120, 40), (30, 90), (50, 50), (124, 100), (125, 100), (126, 100), (140, 100), (57, 97), (201, 33)]


def golden(image: Image.Image, size: int, ratio: float | None) -> np.ndarray:
    """Pad (when ratio is given), bicubic resize of the short side, centre crop, normalize: plain PIL and numpy."""
    w, h = image.size
    if ratio is not None and max(w, h) / min(w, h) >= ratio:
        target = max(w, h) / ratio
        hp, vp = max(int((target - w) / 2), 0), max(int((target - h) / 2), 0)
        canvas = np.zeros((h + 2 * vp, w + 2 * hp, 3), dtype=np.uint8)
        canvas[vp : vp + h, hp : hp + w] = np.asarray(image)
        image = Image.fromarray(canvas)
        w, h = image.size
    if w <= h:
        new = (size, int(size * h / w))
    else:
        new = (int(size * w / h), size)
    image = image.resize(new, Image.BICUBIC)
    top, left = int(round((new[1] - size) / 2.0)), int(round((new[0] - size) / 2.0))
    pixels = np.asarray(image, dtype=np.float32)[top : top + size, left : left + size] / 255.0
    return ((pixels - MEAN) / STD).transpose(2, 0, 1)


def picture(w: int, h: int) -> Image.Image:
    rng = np.random.default_rng(w * 1000 + h)
    return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def clips(tiny_models):
    args = (str(tiny_models.clip_config), str(tiny_models.clip_checkpoint))
    return {
        "clip": ClipModel(*args, device="cpu"),
        "targetpad": ClipModel(*args, device="cpu", preprocess="targetpad"),
        "targetpad-1.5": ClipModel(*args, device="cpu", preprocess={"name": "targetpad", "pad_ratio": 1.5}),
    }


@pytest.mark.parametrize("w, h", SIZES)
def test_targetpad_matches_an_independent_recomputation(clips, w, h):
    image = picture(w, h)
    for name, ratio in (("targetpad", 1.25), ("targetpad-1.5", 1.5), ("clip", None)):
        got = clips[name].preprocess(image).numpy()
        assert got.shape == (3, 32, 32)
        np.testing.assert_allclose(got, golden(image, 32, ratio), atol=1e-5, err_msg=name)


def test_padding_is_black_and_even():
    from cirkit.images import pad_to_ratio

    image = Image.new("RGB", (140, 100), (255, 255, 255))
    padded = np.asarray(pad_to_ratio(image, 1.25))
    assert padded.shape == (112, 140, 3)  # 100 + 2 * int((140 / 1.25 - 100) / 2)
    assert (padded[:6] == 0).all() and (padded[-6:] == 0).all() and (padded[6:-6] == 255).all()
    assert pad_to_ratio(Image.new("RGB", (124, 100)), 1.25).size == (124, 100)  # under the ratio: as it is


def test_reference_and_gallery_images_use_the_same_preprocessing(clips, tmp_path):
    from cirkit.components.embed import EmbedImage
    from cirkit.gallery.index import GalleryIndex, build_index

    model = clips["targetpad"]
    image = picture(120, 40)
    expected = model.encode_images(__import__("torch").from_numpy(golden(image, 32, 1.25))[None])[0]

    step = EmbedImage(EmbedImage.Params(), model=model)
    (result,) = step.run([{"image": image}])
    np.testing.assert_allclose(result.outputs["image_vectors"][0], expected, atol=1e-5)

    gallery = tmp_path / "gallery"
    gallery.mkdir()
    image.save(gallery / "wide.png")
    picture(30, 90).save(gallery / "tall.png")
    build_index(gallery, tmp_path / "idx", model, workers=0)
    index = GalleryIndex.open(tmp_path / "idx")
    np.testing.assert_allclose(index.vectors[index.row_of["wide.png"]], expected, atol=1e-5)


def test_index_refuses_a_query_embedded_with_another_preprocessing(clips, tmp_path):
    from cirkit.gallery.index import GalleryIndex, build_index

    gallery = tmp_path / "gallery"
    gallery.mkdir()
    picture(120, 40).save(gallery / "a.png")
    build_index(gallery, tmp_path / "pad", clips["targetpad"], workers=0)
    build_index(gallery, tmp_path / "plain", clips["clip"], workers=0)

    padded = GalleryIndex.open(tmp_path / "pad")
    assert padded.identity["preprocess_type"] == "targetpad" and padded.identity["pad_ratio"] == 1.25
    padded.check_model(clips["targetpad"].identity)
    with pytest.raises(CirkitError, match="targetpad preprocessing"):
        padded.check_model(clips["clip"].identity)
    with pytest.raises(CirkitError, match="pad ratio 1.5"):
        padded.check_model(clips["targetpad-1.5"].identity)

    # an index without the field (all indexes built before it existed) means clip preprocessing
    plain = GalleryIndex.open(tmp_path / "plain")
    assert "preprocess_type" not in plain.identity
    plain.check_model(clips["clip"].identity)
    with pytest.raises(CirkitError, match="targetpad"):
        plain.check_model(clips["targetpad"].identity)


def test_preprocess_option_is_validated(tiny_models):
    from pydantic import ValidationError

    from cirkit.pipelines.spec import ModelSpec

    assert ModelSpec(type="clip", name="ViT-B-32", preprocess="targetpad").preprocess == {"name": "targetpad", "pad_ratio": 1.25}
    assert ModelSpec(type="clip", name="ViT-B-32", preprocess="clip").preprocess is None
    assert "preprocess" not in ModelSpec(type="clip", name="ViT-B-32").model_dump()  # fingerprints of older files stay
    for bad, message in [
        ({"type": "llm", "id": "x", "preprocess": "targetpad"}, "option of clip models"),
        ({"type": "clip", "name": "x", "preprocess": {"name": "targetpad", "pad_ratio": 0.8}}, "pad_ratio must be a number >= 1"),
        ({"type": "clip", "name": "x", "preprocess": {"name": "clip", "pad_ratio": 1.3}}, "pad_ratio goes with targetpad"),
        ({"type": "clip", "name": "x", "preprocess": "squash"}, "unknown type 'squash'"),
    ]:
        with pytest.raises(ValidationError, match=message):
            ModelSpec(**bad)
    with pytest.raises(CirkitError, match="pad_ratio must be"):
        ClipModel(str(tiny_models.clip_config), str(tiny_models.clip_checkpoint), preprocess={"pad_ratio": "big"})


def test_pipeline_file_error_names_the_field(tmp_path, tiny_models):
    from cirkit.pipelines import load_pipeline

    path = tmp_path / "p.yaml"
    path.write_text(
        f"name: p\nmodels:\n  clip: {{type: clip, name: '{tiny_models.clip_config}', preprocess: {{name: targetpad, pad_ratio: 0.5}}}}\n"
        "steps:\n  - {name: embed, kind: embed_image, model: clip}\n"
    )
    with pytest.raises(CirkitError, match="pad_ratio must be a number >= 1"):
        load_pipeline(path)
