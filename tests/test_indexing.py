"""Indexing options: --precision (autocast), decoding workers, batch sizes; real tiny CLIP, real worker processes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cirkit.engines.open_clip_engine import ClipModel
from cirkit.errors import CirkitError
from cirkit.gallery import build_index

from conftest import CtrlCAfter, make_gallery
from test_gallery import _snapshot, assert_consistent, load_index, one_error_line, parse_report


def clip_model(models, precision: str = "auto") -> ClipModel:
    return ClipModel(str(models.clip_config), str(models.clip_checkpoint), device="cpu", precision=precision)


@pytest.fixture(scope="module")
def noisy_gallery(tmp_path_factory) -> Path:
    """Textured photos-like JPEGs (noise survives into the vectors), plus broken files: the first four
    sort together, so one batch of four holds only failures."""
    root = tmp_path_factory.mktemp("noisy")
    rng = np.random.default_rng(7)
    for i in range(4):
        (root / f"a-broken{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all %d" % i)  # distinct: not one hash
    for i in range(37):
        base = rng.integers(0, 256, 3)
        pixels = np.clip(base + rng.normal(0, 40, (48, 64, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / f"b{i:03d}.jpg", quality=90)
    (root / "c-empty.jpg").write_bytes(b"")
    return root


# ------------------------------------------------------------------ --precision


def test_precision_bf16_on_cpu_is_close_to_fp32_and_recorded(cli, noisy_gallery, tiny_pipeline, tmp_path):
    fp32, bf16 = tmp_path / "fp32", tmp_path / "bf16"
    first = cli("index", noisy_gallery, "--out", fp32, "--pipeline", tiny_pipeline)
    second = cli("index", noisy_gallery, "--out", bf16, "--pipeline", tiny_pipeline, "--precision", "bf16")
    assert first.exit_code == 0 and second.exit_code == 0, first.stderr + second.stderr
    assert parse_report(second.stdout)["embedded"] == 37

    m32, v32 = assert_consistent(fp32)
    m16, v16 = assert_consistent(bf16)
    assert m32["precision"] == "fp32" and m16["precision"] == "bf16"  # auto is fp32 on CPU
    assert (fp32 / "cache" / "precision.txt").read_text().strip() == "fp32"
    assert m16["model"] == m32["model"]  # same CLIP identity: queries embedded in fp32 are accepted
    assert m16["entries"] == m32["entries"]
    assert v16.dtype == np.float32
    assert not np.array_equal(v16, v32)  # the forward pass did run in bf16
    cosines = np.sum(v16 * v32, axis=1)
    assert cosines.min() > 0.99, cosines.min()
    assert np.array_equal(np.argmax(v16 @ v32.T, axis=1), np.arange(len(v32)))  # each row finds itself


def test_clip_model_precision(tiny_models):
    import torch

    fp32, bf16 = clip_model(tiny_models, "fp32"), clip_model(tiny_models, "bf16")
    assert (clip_model(tiny_models).precision, fp32.precision, bf16.precision) == ("fp32", "fp32", "bf16")
    assert bf16.identity == fp32.identity
    assert next(bf16.model.parameters()).dtype == torch.float32  # autocast, not cast weights
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    pixels = torch.stack([fp32.preprocess(image)])
    a, b = fp32.encode_images(pixels), bf16.encode_images(pixels)
    assert a.dtype == b.dtype == np.float32
    assert not np.array_equal(a, b) and float(a[0] @ b[0]) > 0.99
    assert np.allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    texts_a, _ = fp32.encode_texts(["a red dress"])
    texts_b, _ = bf16.encode_texts(["a red dress"])
    assert float(texts_a[0] @ texts_b[0]) > 0.99

    with pytest.raises(CirkitError, match="unknown precision 'int8': choose one of auto, fp32, bf16, fp16"):
        clip_model(tiny_models, "int8")


def test_bad_precision_is_one_line_and_touches_nothing(cli, gallery, tiny_pipeline, tmp_path):
    out = tmp_path / "idx"
    result = cli("index", gallery, "--out", out, "--pipeline", tiny_pipeline, "--precision", "fp8")
    assert result.exit_code != 0
    assert "Traceback" not in result.stdout + result.stderr
    line = one_error_line(result.stderr)
    assert "fp8" in line and "auto, fp32, bf16, fp16" in line
    assert not out.exists()


def test_update_in_another_precision_is_refused(cli, tiny_pipeline, tmp_path):
    images = make_gallery(tmp_path / "images", 6)
    out = tmp_path / "idx"
    assert cli("index", images, "--out", out, "--pipeline", tiny_pipeline).exit_code == 0
    Image.new("RGB", (40, 32), (1, 2, 3)).save(images / "new.jpg", quality=95)
    before = _snapshot(out)

    refused = cli("index", images, "--out", out, "--pipeline", tiny_pipeline, "--precision", "bf16")
    assert refused.exit_code != 0
    line = one_error_line(refused.stderr)
    assert "fp32" in line and "bf16" in line and "--precision fp32" in line
    assert _snapshot(out) == before  # nothing embedded into the fp32 cache

    accepted = cli("index", images, "--out", out, "--pipeline", tiny_pipeline, "--precision", "fp32")
    assert accepted.exit_code == 0, accepted.stderr
    assert parse_report(accepted.stdout) == {"count": 7, "embedded": 1, "reused": 6, "removed": 0, "skipped": 0}
    assert load_index(out)[0]["precision"] == "fp32"


# ------------------------------------------------------------------ workers, batches, resume


def test_workers_do_not_change_the_index(tiny_models, noisy_gallery, tmp_path):
    """The same batches, the same bits, with decoding in the main process or in 1 or 2 worker processes,
    including a batch where every file fails and a partly failed one."""
    clip = clip_model(tiny_models)
    results = {}
    for workers in (0, 1, 2):
        report = build_index(noisy_gallery, tmp_path / f"w{workers}", clip, batch_size=4, workers=workers, progress=False)
        assert (report.count, report.embedded, len(report.skipped)) == (37, 37, 5)
        results[workers] = load_index(tmp_path / f"w{workers}")
    manifest, vectors = results[0]
    assert {s["path"] for s in manifest["skipped"]} == {f"a-broken{i}.jpg" for i in range(4)} | {"c-empty.jpg"}
    for workers in (1, 2):
        assert results[workers][0]["entries"] == manifest["entries"]
        assert results[workers][0]["skipped"] == manifest["skipped"]
        assert np.array_equal(results[workers][1], vectors), workers


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_interrupted_build_resumes_bit_identical(tiny_models, noisy_gallery, tmp_path, precision):
    """Ctrl-C while decode workers run ahead: the resumed build equals an uninterrupted one, bit for bit."""
    clip = clip_model(tiny_models, precision)
    out = tmp_path / "idx"
    with pytest.raises(KeyboardInterrupt):
        build_index(noisy_gallery, out, CtrlCAfter(clip, at=5), batch_size=4, workers=2, progress=False)
    assert not (out / "manifest.json").exists()
    assert len(list((out / "cache").glob("shard-*.npz"))) == 1  # the batches before the interruption

    resumed = build_index(noisy_gallery, out, clip, batch_size=4, workers=1, progress=False)
    # the 5 saved batches: one of 4 failures (no forward pass), then 4 of 4 images; the 5th call was interrupted
    assert (resumed.count, resumed.embedded, resumed.reused) == (37, 37 - 16, 16 + 4)
    build_index(noisy_gallery, tmp_path / "fresh", clip, batch_size=4, workers=0, progress=False)
    (a, va), (b, vb) = load_index(out), load_index(tmp_path / "fresh")
    assert a["entries"] == b["entries"] and a["skipped"] == b["skipped"]
    assert a["precision"] == b["precision"] == precision
    assert np.array_equal(va, vb)


def test_default_batch_size_follows_the_device(cli, tiny_models, tmp_path):
    """Without --batch-size a CPU build embeds in batches of 64 (whole batches per cache shard)."""
    images = tmp_path / "images"
    images.mkdir()
    for i in range(70):
        Image.new("RGB", (16, 16), (i * 3, 100, 255 - i * 3)).save(images / f"p{i:03d}.png")
    clip = clip_model(tiny_models)
    assert clip.batch_size == 64
    out = tmp_path / "idx"
    with pytest.raises(KeyboardInterrupt):  # the second batch is interrupted: the first (64 images) is kept
        build_index(images, out, CtrlCAfter(clip, at=2), progress=False)
    (shard,) = (out / "cache").glob("shard-*.npz")
    with np.load(shard) as data:
        assert len(data["hashes"]) == 64
    resumed = cli("index", images, "--out", out, "--clip", tiny_models.clip_config, "--pretrained", tiny_models.clip_checkpoint)
    assert resumed.exit_code == 0, resumed.stderr
    assert parse_report(resumed.stdout) == {"count": 70, "embedded": 6, "reused": 64, "removed": 0, "skipped": 0}
    assert json.loads((out / "manifest.json").read_text())["precision"] == "fp32"
