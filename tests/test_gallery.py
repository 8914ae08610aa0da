"""The gallery index end to end: `cirkit index` builds, updates, resumes and refuses; real tiny CLIP, no mocks."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cirkit.gallery import index as gallery_mod
from cirkit.errors import CirkitError
from cirkit.gallery import GalleryIndex

from conftest import CtrlCAfter, make_gallery
from tiny_models import build_tiny_clip
import tiny_models

REPORT = re.compile(
    r"indexed (\d+) images into .* \((\d+) embedded, (\d+) reused, (\d+) removed, (\d+) skipped\)"
)
PROGRESS_LINE = re.compile(r"^\s*(hashing|embedding)\b")


def parse_report(stdout: str) -> dict[str, int]:
    m = REPORT.search(stdout)
    assert m, f"no report line in output: {stdout!r}"
    return dict(zip(("count", "embedded", "reused", "removed", "skipped"), map(int, m.groups())))


def load_index(directory: Path) -> tuple[dict, np.ndarray]:
    manifest = json.loads((directory / "manifest.json").read_text())
    return manifest, np.load(directory / manifest["vectors_file"])


def image_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def assert_consistent(directory: Path) -> tuple[dict, np.ndarray]:
    manifest, vectors = load_index(directory)
    opened = GalleryIndex.open(directory)
    assert manifest["count"] == len(manifest["entries"]) == len(vectors) == opened.faiss_index.ntotal
    assert vectors.dtype == np.float32 and vectors.shape[1] == manifest["dim"]
    return manifest, vectors


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got: {stderr!r}"
    return lines[0]


def tiny_clip_model(models):
    from cirkit.engines.open_clip_engine import ClipModel

    return ClipModel(str(models.clip_config), str(models.clip_checkpoint), device="cpu")


def embed_file(clip, path: Path) -> np.ndarray:
    import torch

    from cirkit.images import load_image

    return clip.encode_images(torch.stack([clip.preprocess(load_image(path))]))[0]


@pytest.fixture(scope="module")
def other_clip(tmp_path_factory) -> tuple[Path, Path]:
    """A second tiny open_clip model: another config name and a narrower embedding."""
    config = {**tiny_models.CLIP_CONFIG, "embed_dim": 16}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tiny_models, "CLIP_CONFIG", config)
        return build_tiny_clip(tmp_path_factory.mktemp("other_clip"), name="cirkit-other-clip")


@pytest.fixture(scope="module")
def small_index(tmp_path_factory, tiny_pipeline) -> tuple[Path, Path]:
    """(gallery, index) of 8 images, private to this module so refusal tests can't disturb other tests."""
    from cirkit.api import index_folder

    base = tmp_path_factory.mktemp("small")
    images = make_gallery(base / "images", 8)
    out = base / "idx"
    index_folder(images, out, pipeline=tiny_pipeline)
    return images, out


# ------------------------------------------------------------------ 1. build through the CLI


def test_index_command_builds_a_searchable_index(cli, gallery, tiny_pipeline, tiny_models, tmp_path):
    out = tmp_path / "idx"
    result = cli("index", gallery, "--out", out, "--pipeline", tiny_pipeline)
    assert result.exit_code == 0, result.stderr
    files = image_files(gallery)
    assert any("/" in f for f in files)  # the fixture has a subfolder
    assert parse_report(result.stdout) == {
        "count": len(files), "embedded": len(files), "reused": 0, "removed": 0, "skipped": 0
    }

    manifest, vectors = assert_consistent(out)
    assert manifest["root"] == str(gallery.resolve())
    assert [e["path"] for e in manifest["entries"]] == files  # relative POSIX paths, sorted, subfolders too
    for e in manifest["entries"]:
        assert e["sha256"] == hashlib.sha256((gallery / e["path"]).read_bytes()).hexdigest()
    assert manifest["skipped"] == []
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)

    clip = tiny_clip_model(tiny_models)
    assert manifest["model"] == clip.identity
    for i in (0, 1, len(files) - 1):  # a subfolder image and top-level ones
        own = embed_file(clip, gallery / files[i])
        assert np.allclose(vectors[i], own, atol=1e-5), files[i]
        assert int(np.argmax(vectors @ own)) == i  # its row, not a neighbour's

    opened = GalleryIndex.open(out)
    assert len(opened) == len(files)
    for i in (0, 7, len(files) - 1):
        hits = opened.search(np.asarray(vectors[i : i + 1]), k=3)[0]
        assert hits[0]["rank"] == 1 and hits[0]["path"] == files[i]
        assert hits[0]["file"] == str(gallery.resolve() / files[i])
        assert hits[0]["score"] == pytest.approx(1.0, abs=1e-4)


# ------------------------------------------------------------------ 2. bad and odd files


def _write_bad_and_odd_images(root: Path) -> tuple[dict[str, str], list[str]]:
    """Bad files (relative path -> expected reason prefix) and odd-but-valid images, all in `root`."""
    (root / "bad").mkdir(parents=True)
    (root / "odd").mkdir()
    (root / "bad" / "empty.jpg").write_bytes(b"")
    (root / "bad" / "notes.jpg").write_text("this is not a JPEG, just text\n" * 5)
    buf = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buf, "JPEG", quality=90)
    (root / "bad" / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    Image.new("RGB", (100, 80), (10, 200, 30)).save(root / "bad" / "huge.png")  # 8000 px > --max-pixels 5000
    bad = {
        "bad/empty.jpg": "empty file",
        "bad/notes.jpg": "not an image",
        "bad/truncated.jpg": "corrupt or truncated",
        "bad/huge.png": "too large",
    }

    Image.new("CMYK", (24, 24), (0, 255, 255, 0)).save(root / "odd" / "cmyk.jpg", quality=95)
    ramp = np.linspace(0, 65535, 32 * 24).round().astype(np.uint16).reshape(24, 32)
    Image.fromarray(ramp).save(root / "odd" / "gray16.png")
    with Image.open(root / "odd" / "gray16.png") as im:
        assert im.mode in ("I;16", "I")
    pal = Image.new("P", (24, 24), 0)
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.paste(1, (0, 0, 12, 24))
    pal.save(root / "odd" / "palette.png", transparency=0)
    rgba = Image.new("RGBA", (24, 24), (0, 128, 255, 128))
    rgba.save(root / "odd" / "rgba.png")
    frames = [Image.new("RGB", (24, 24), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(root / "odd" / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    odd = ["odd/anim.gif", "odd/cmyk.jpg", "odd/gray16.png", "odd/palette.png", "odd/rgba.png"]
    return bad, odd


def test_bad_files_are_skipped_and_odd_images_indexed(cli, tiny_pipeline, tmp_path):
    images = make_gallery(tmp_path / "images", 6)
    bad, odd = _write_bad_and_odd_images(images)
    out = tmp_path / "idx"
    result = cli("index", images, "--out", out, "--pipeline", tiny_pipeline, "--max-pixels", "5000")
    assert result.exit_code == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    report = parse_report(result.stdout)
    assert report["skipped"] == len(bad)
    assert report["count"] == 6 + len(odd)
    for path, reason in bad.items():  # the command lists each skipped file with its reason
        line = next((line for line in result.stderr.splitlines() if path in line), None)
        assert line is not None and reason in line, (path, result.stderr)

    manifest, vectors = assert_consistent(out)
    skipped = {s["path"]: s["reason"] for s in manifest["skipped"]}
    assert set(skipped) == set(bad)
    for path, reason in bad.items():
        assert skipped[path].startswith(reason), (path, skipped[path])
    indexed = [e["path"] for e in manifest["entries"]]
    assert set(odd) <= set(indexed)
    assert not set(bad) & set(indexed)
    assert np.all(np.isfinite(vectors))
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)

    # A re-run reuses everything, including the known failures, and reports the same skips.
    again = cli("index", images, "--out", out, "--pipeline", tiny_pipeline, "--max-pixels", "5000")
    assert again.exit_code == 0, again.stderr
    again_report = parse_report(again.stdout)
    assert (again_report["count"], again_report["embedded"], again_report["skipped"]) == (report["count"], 0, len(bad))
    assert assert_consistent(out)[0]["skipped"] == manifest["skipped"]

    # The size refusal depends on --max-pixels, not on the file: a higher limit indexes the image.
    raised = cli("index", images, "--out", out, "--pipeline", tiny_pipeline, "--max-pixels", "9000")
    assert raised.exit_code == 0, raised.stderr
    assert parse_report(raised.stdout)["embedded"] == 1
    manifest, _ = assert_consistent(out)
    assert "bad/huge.png" in [e["path"] for e in manifest["entries"]]
    assert {s["path"] for s in manifest["skipped"]} == set(bad) - {"bad/huge.png"}


# ------------------------------------------------------------------ 3. incremental update


def test_incremental_update_embeds_only_new_images(cli, tiny_pipeline, tmp_path):
    images = make_gallery(tmp_path / "images", 12)
    out = tmp_path / "idx"
    args = ("--out", out, "--pipeline", tiny_pipeline)
    first = cli("index", images, *args)
    assert first.exit_code == 0, first.stderr
    assert parse_report(first.stdout)["embedded"] == 12

    Image.new("RGB", (40, 32), (250, 250, 5)).save(images / "new1.jpg", quality=95)
    Image.new("RGB", (40, 32), (5, 250, 250)).save(images / "sub" / "new2.jpg", quality=95)
    (images / "img0001.jpg").unlink()
    second = cli("index", images, *args)
    assert second.exit_code == 0, second.stderr
    assert parse_report(second.stdout) == {"count": 13, "embedded": 2, "reused": 11, "removed": 1, "skipped": 0}

    fresh = tmp_path / "fresh"
    rebuilt = cli("index", images, "--out", fresh, "--pipeline", tiny_pipeline)
    assert rebuilt.exit_code == 0, rebuilt.stderr
    assert parse_report(rebuilt.stdout)["embedded"] == 13
    updated, updated_vectors = assert_consistent(out)
    expected, expected_vectors = assert_consistent(fresh)
    assert updated["entries"] == expected["entries"]
    assert [e["path"] for e in updated["entries"]] == image_files(images)
    assert np.allclose(updated_vectors, expected_vectors, atol=1e-6)
    # old vector/index files are gone once the new manifest is in place
    assert [p.name for p in out.glob("vectors-*.npy")] == [updated["vectors_file"]]
    assert [p.name for p in out.glob("index-*.faiss")] == [updated["index_file"]]

    third = cli("index", images, *args)  # nothing changed: nothing embedded, same index
    assert parse_report(third.stdout) == {"count": 13, "embedded": 0, "reused": 13, "removed": 0, "skipped": 0}
    assert load_index(out)[0]["entries"] == updated["entries"]


# ------------------------------------------------------------------ 4. resume after kill -9 / Ctrl-C

BIG_COUNT = 1800  # one cache shard (SHARD_IMAGES) and then some, so an interruption finds a run still going
BATCH = "32"


def _cirkit_script() -> str:
    script = Path(sys.executable).parent / "cirkit"
    return str(script) if script.is_file() else shutil.which("cirkit")


@pytest.fixture(scope="module")
def big_gallery(tmp_path_factory) -> Path:
    assert BIG_COUNT > gallery_mod.SHARD_IMAGES
    root = tmp_path_factory.mktemp("big")
    (root / "sub").mkdir()
    for i in range(BIG_COUNT):  # distinct lossless images: every one is embedded
        folder = root / "sub" if i % 5 == 0 else root
        Image.new("RGB", (16, 16), (i % 256, (i // 256) * 30, 128)).save(folder / f"p{i:05d}.png")
    return root


@pytest.fixture(scope="module")
def big_reference(big_gallery, tiny_pipeline, tmp_path_factory) -> tuple[dict, np.ndarray]:
    """An uninterrupted build of the big gallery, with the same batch size as the CLI runs."""
    from cirkit.api import index_folder

    out = tmp_path_factory.mktemp("big_ref") / "idx"
    report = index_folder(big_gallery, out, pipeline=tiny_pipeline, batch_size=int(BATCH), workers=0)
    assert report.embedded == report.count == BIG_COUNT
    return load_index(out)


def _run_cirkit(args: list, tmp_path: Path, **kw) -> subprocess.Popen:
    env = {
        **os.environ,
        "CIRKIT_DATA_DIR": str(tmp_path / "data"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "COLUMNS": "200",
    }
    env.pop("CIRKIT_DEBUG", None)
    return subprocess.Popen(
        [_cirkit_script(), *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, like a shell job: signals reach the decode workers too
        **kw,
    )


def _interrupt_after_first_shard(args: list, out: Path, tmp_path: Path, sig: int, delay: float = 0.0):
    proc = _run_cirkit(args, tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not list((out / "cache").glob("shard-*.npz")):
            if proc.poll() is not None:
                stdout, stderr = proc.communicate()
                pytest.fail(f"cirkit index ended (rc {proc.returncode}) before writing a shard:\n{stdout}\n{stderr}")
            assert time.monotonic() < deadline, "no cache shard after 120 s"
            time.sleep(0.005)
        time.sleep(delay)
        os.killpg(proc.pid, sig)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert not (out / "manifest.json").exists(), "the run finished before it was interrupted"
    return proc.returncode, stdout, stderr


def _resume_and_compare(cli, args: list, out: Path, reference) -> dict[str, int]:
    """The same command again, to completion (in process: the same entry point, without the start-up cost)."""
    result = cli(*args)
    assert result.exit_code == 0, result.stderr
    report = parse_report(result.stdout)
    assert report["count"] == BIG_COUNT
    assert report["reused"] >= gallery_mod.SHARD_IMAGES  # the shard written before the interruption
    assert report["embedded"] == BIG_COUNT - report["reused"] < BIG_COUNT

    manifest, vectors = assert_consistent(out)
    ref_manifest, ref_vectors = reference
    assert manifest["entries"] == ref_manifest["entries"]
    assert np.array_equal(vectors, ref_vectors)
    return report


def test_resume_after_kill_9(cli, big_gallery, big_reference, tiny_pipeline, tmp_path):
    out = tmp_path / "idx"
    args = ["index", big_gallery, "--out", out, "--pipeline", tiny_pipeline, "--batch-size", BATCH]
    code, _, _ = _interrupt_after_first_shard(args, out, tmp_path, signal.SIGKILL)
    assert code == -signal.SIGKILL
    _resume_and_compare(cli, args, out, big_reference)


def test_resume_after_ctrl_c(cli, big_gallery, big_reference, tiny_pipeline, tmp_path):
    out = tmp_path / "idx"
    args = ["index", big_gallery, "--out", out, "--pipeline", tiny_pipeline, "--batch-size", BATCH]
    code, stdout, stderr = _interrupt_after_first_shard(args, out, tmp_path, signal.SIGINT, delay=0.01)
    assert "Traceback" not in stdout + stderr
    _resume_and_compare(cli, args, out, big_reference)

    messages = [line for line in stderr.splitlines() if line.strip() and not PROGRESS_LINE.match(line)]
    assert code == 130, (code, stderr)
    assert len(messages) == 1 and "interrupted" in messages[0], stderr


def test_interrupted_build_keeps_finished_batches(tiny_models, tmp_path):
    """Batches embedded before a Ctrl-C are saved (even short of a full shard) and not embedded again."""
    from cirkit.gallery import build_index

    images = tmp_path / "images"
    images.mkdir()
    for i in range(45):
        Image.new("RGB", (16, 16), (i * 5, 255 - i * 5, 77)).save(images / f"q{i:03d}.png")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    clip = tiny_clip_model(tiny_models)
    out = tmp_path / "idx"
    with pytest.raises(KeyboardInterrupt):
        build_index(images, out, CtrlCAfter(clip, at=4), batch_size=8, workers=0, progress=False)
    assert not (out / "manifest.json").exists()
    assert len(list((out / "cache").glob("shard-*.npz"))) == 1  # 3 whole batches, short of SHARD_IMAGES

    resumed = build_index(images, out, clip, batch_size=8, workers=0, progress=False)
    # 46 files; the 3 saved batches held broken.png (a cached failure) and 23 images
    assert (resumed.count, resumed.embedded, len(resumed.skipped)) == (45, 46 - 24, 1)
    build_index(images, tmp_path / "fresh", clip, batch_size=8, workers=0, progress=False)
    (a, va), (b, vb) = load_index(out), load_index(tmp_path / "fresh")
    assert a["entries"] == b["entries"] and a["skipped"] == b["skipped"]
    assert np.array_equal(va, vb)


# ------------------------------------------------------------------ 5. refusals


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_refuses_non_empty_folder_that_is_not_an_index(cli, gallery, tiny_pipeline, tmp_path):
    out = tmp_path / "stuff"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = cli("index", gallery, "--out", out, "--pipeline", tiny_pipeline)
    assert result.exit_code != 0
    assert "Traceback" not in result.stdout + result.stderr
    line = one_error_line(result.stderr)
    assert "not empty" in line and "no cirkit index" in line
    assert _snapshot(out) == {"keep.txt": b"mine"} and [p.name for p in out.iterdir()] == ["keep.txt"]


def test_a_first_run_stopped_before_its_first_write_is_not_refused(cli, gallery, tiny_pipeline, tmp_path):
    # what a first run killed right after creating its folders leaves: an empty cache, or a half-written temporary file
    for leftover in ([], [".tmp-123-model.json"]):
        out = tmp_path / f"idx{len(leftover)}"
        (out / "cache").mkdir(parents=True)
        for name in leftover:
            (out / "cache" / name).write_text("{")
        result = cli("index", gallery, "--out", out, "--pipeline", tiny_pipeline)
        assert result.exit_code == 0, result.stderr
        assert "indexed 30 images" in result.stdout


def test_refuses_index_built_with_another_clip(cli, small_index, other_clip):
    images, out = small_index
    before = _snapshot(out)
    config, checkpoint = other_clip
    result = cli("index", images, "--out", out, "--clip", config, "--pretrained", checkpoint)
    assert result.exit_code != 0
    assert "Traceback" not in result.stdout + result.stderr
    line = one_error_line(result.stderr)
    assert "cirkit-tiny-clip" in line and "cirkit-other-clip" in line
    assert _snapshot(out) == before


def test_same_clip_given_as_files_updates_the_index(cli, small_index, tiny_models):
    """The pipeline's CLIP given directly (--clip CONFIG --pretrained CKPT) is the same model: accepted."""
    images, out = small_index
    before = (out / "manifest.json").read_bytes()
    result = cli("index", images, "--out", out, "--clip", tiny_models.clip_config, "--pretrained", tiny_models.clip_checkpoint)
    assert result.exit_code == 0, result.stderr
    assert parse_report(result.stdout) == {"count": 8, "embedded": 0, "reused": 8, "removed": 0, "skipped": 0}
    after = json.loads((out / "manifest.json").read_bytes())
    assert after["entries"] == json.loads(before)["entries"]
    assert after["vectors_file"] == json.loads(before)["vectors_file"]


def test_refuses_missing_images_dir(cli, small_index, tiny_pipeline, tmp_path):
    _, out = small_index
    before = _snapshot(out)
    result = cli("index", tmp_path / "nowhere", "--out", out, "--pipeline", tiny_pipeline)
    assert result.exit_code != 0
    assert "Traceback" not in result.stdout + result.stderr
    assert "nowhere" in one_error_line(result.stderr)
    assert _snapshot(out) == before

    new_out = tmp_path / "new"
    result = cli("index", tmp_path / "nowhere", "--out", new_out, "--pipeline", tiny_pipeline)
    assert result.exit_code != 0
    assert "nowhere" in one_error_line(result.stderr)
    assert not new_out.exists()


def test_refuses_pretrained_without_clip(cli, small_index, tiny_models, tiny_pipeline):
    images, out = small_index
    before = _snapshot(out)
    result = cli("index", images, "--out", out, "--pipeline", tiny_pipeline, "--pretrained", tiny_models.clip_checkpoint)
    assert result.exit_code != 0
    assert "Traceback" not in result.stdout + result.stderr
    line = one_error_line(result.stderr)
    assert "--pretrained" in line and "--clip" in line
    assert _snapshot(out) == before


# ------------------------------------------------------------------ 6. querying with another CLIP


def test_check_model_refuses_another_clip(small_index, other_clip, tiny_models):
    from cirkit.engines.open_clip_engine import ClipModel

    _, out = small_index
    index = GalleryIndex.open(out)
    index.check_model(tiny_clip_model(tiny_models).identity)  # the building model: accepted

    config, checkpoint = other_clip
    other = ClipModel(str(config), str(checkpoint), device="cpu").identity
    assert other["name"] == "cirkit-other-clip" and other["dim"] == 16
    with pytest.raises(CirkitError) as info:
        index.check_model(other)
    message = str(info.value)
    assert "cirkit-tiny-clip" in message and "cirkit-other-clip" in message
    assert str(out) in message


def test_a_clip_model_without_weights_has_the_same_random_weights_every_time(tiny_models):
    import torch

    from cirkit.engines.open_clip_engine import ClipModel

    vectors = []
    for seed in (1, 2):
        torch.manual_seed(seed)  # whatever the global random state, as in another process
        clip = ClipModel(str(tiny_models.clip_config), None, device="cpu")
        vectors.append(clip.encode_texts(["a red dress"])[0])
    np.testing.assert_array_equal(vectors[0], vectors[1])
    assert clip.identity["name"] == tiny_models.clip_config.stem and "pretrained" not in clip.identity
