"""`cirkit index --engine ray`: a real local Ray instance, the real tiny CLIP, compared with the local engine.

One Ray instance (2 CPUs, a small object store) serves the whole module; the CLI and the Python API
use it as "the Ray this process already started". Cluster addresses are tried in subprocesses, where
no Ray is running.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cirkit.gallery import index as gallery_mod
from cirkit.errors import CirkitError
from cirkit.gallery import GalleryIndex, build_index

from conftest import make_gallery

REPO = Path(__file__).resolve().parents[1]
BATCH = 4
SHARD = 8  # images per cache shard (and per Ray block) in these tests: 2 batches, so a small gallery has 4 blocks


@pytest.fixture(scope="module")
def ray_instance():
    import logging

    import ray  # the ray extra is part of the dev install

    ray.init(num_cpus=2, object_store_memory=100 * 2**20, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture
def small_shards(monkeypatch):
    monkeypatch.setattr(gallery_mod, "SHARD_IMAGES", SHARD)


@pytest.fixture(scope="module")
def mixed_gallery(gallery, tmp_path_factory) -> Path:
    """The shared 30-image gallery (with a subfolder) plus two files that fail to decode."""
    root = tmp_path_factory.mktemp("ray_gallery") / "images"
    shutil.copytree(gallery, root)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "sub" / "empty.jpg").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def local_reference(mixed_gallery, tiny_pipeline, tmp_path_factory) -> Path:
    """The same gallery indexed by the local engine, with the same batch size and shard size."""
    from cirkit.api import index_folder

    out = tmp_path_factory.mktemp("ray_reference") / "idx"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gallery_mod, "SHARD_IMAGES", SHARD)
        report = index_folder(mixed_gallery, out, pipeline=tiny_pipeline, batch_size=BATCH, workers=0)
    assert (report.count, report.embedded, len(report.skipped)) == (30, 30, 2)
    return out


def manifest_of(directory: Path) -> dict:
    return json.loads((directory / "manifest.json").read_text())


def assert_same_index(built: Path, reference: Path) -> None:
    """Same manifest (but its time stamp), bit-identical vectors and FAISS files, same search results."""
    a, b = manifest_of(built), manifest_of(reference)
    a.pop("updated_at"), b.pop("updated_at")
    assert a == b
    assert (built / a["vectors_file"]).read_bytes() == (reference / b["vectors_file"]).read_bytes()
    assert (built / a["index_file"]).read_bytes() == (reference / b["index_file"]).read_bytes()
    mine, theirs = GalleryIndex.open(built), GalleryIndex.open(reference)
    queries = np.asarray(theirs.vectors[[0, 7, 29]]) + 0.01
    assert mine.search(queries, k=5) == theirs.search(queries, k=5)


def shard_files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((directory / "cache").glob("shard-*.npz"))}


def cached_hashes(directory: Path) -> tuple[set[str], set[str]]:
    """(hashes with vectors, hashes of failures) in an index directory's cache."""
    vectors, failed = set(), set()
    for shard in sorted((directory / "cache").glob("shard-*.npz")):
        with np.load(shard) as data:
            vectors |= set(data["hashes"].tolist())
            failed |= set(data["failed_hashes"].tolist())
    return vectors, failed


def shard_contents(directory: Path) -> list[tuple[str, ...]]:
    """Each cache shard's hashes (vectors, then failures), in its order."""
    contents = []
    for shard in sorted((directory / "cache").glob("shard-*.npz")):
        with np.load(shard) as data:
            contents.append((*data["hashes"].tolist(), "|", *data["failed_hashes"].tolist()))
    return contents


def tiny_clip(models):
    from cirkit.engines.open_clip_engine import ClipModel

    return ClipModel(str(models.clip_config), str(models.clip_checkpoint), device="cpu")


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def run_cirkit(args: list, tmp_path: Path, code: str | None = None) -> subprocess.CompletedProcess:
    """The real command line in a fresh process (no Ray running in it), bounded so that a hang fails the test."""
    env = {**os.environ, "CIRKIT_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "200", "HF_HUB_OFFLINE": "1"}
    env.pop("CIRKIT_DEBUG", None)
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "-c", code, *map(str, args)] if code else [sys.executable, "-m", "cirkit", *map(str, args)]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)


def message_lines(stderr: str) -> list[str]:
    """stderr without the progress bars."""
    return [line for line in stderr.splitlines() if line.strip() and not line.strip().startswith(("hashing", "embedding"))]


# ------------------------------------------------------------------ the same index as the local engine


def test_ray_build_equals_the_local_build(cli, ray_instance, mixed_gallery, local_reference, tiny_pipeline,
                                          small_shards, tmp_path):
    out = tmp_path / "idx"
    result = cli("index", mixed_gallery, "--out", out, "--pipeline", tiny_pipeline, "--engine", "ray",
                 "--batch-size", BATCH)
    assert result.exit_code == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "indexed 30 images" in result.stdout and "(30 embedded, 0 reused, 0 removed, 2 skipped)" in result.stdout
    assert_same_index(out, local_reference)
    # one cache shard per block of 8 images, in the local engine's format; block by block, the same
    # images as the local engine's shards (whole batches of the local order, whatever order they came in)
    assert len(shard_files(out)) == 4
    assert sorted(shard_contents(out)) == sorted(shard_contents(local_reference))
    assert {s["path"] for s in manifest_of(out)["skipped"]} == {"broken.png", "sub/empty.jpg"}

    again = cli("index", mixed_gallery, "--out", out, "--pipeline", tiny_pipeline, "--engine", "ray",
                "--batch-size", BATCH)
    assert again.exit_code == 0, again.stderr
    assert "(0 embedded, 32 reused, 0 removed, 2 skipped)" in again.stdout
    assert_same_index(out, local_reference)


# ------------------------------------------------------------------ resume


def test_interrupted_ray_build_resumes_from_its_blocks(ray_instance, mixed_gallery, local_reference, tiny_models,
                                                       tiny_pipeline, small_shards, tmp_path):
    from cirkit.api import index_folder
    from cirkit.gallery.ray_embed import RayEmbedder

    embedder = RayEmbedder({"name": str(tiny_models.clip_config), "pretrained": str(tiny_models.clip_checkpoint)})

    def ctrl_c_after_four_batches(*args):
        """The Ray engine, with a Ctrl-C arriving once it has delivered 4 batches (2 blocks)."""
        batches = embedder(*args)
        try:
            for n, batch in enumerate(batches, start=1):
                yield batch
                if n == 4:
                    raise KeyboardInterrupt
        finally:
            batches.close()

    out = tmp_path / "idx"
    with pytest.raises(KeyboardInterrupt):
        build_index(mixed_gallery, out, tiny_clip(tiny_models), batch_size=BATCH, progress=False,
                    embedder=ctrl_c_after_four_batches)
    assert not (out / "manifest.json").exists()
    kept = shard_files(out)
    assert len(kept) == 2  # the two blocks delivered before the interruption
    done_vectors, done_failures = cached_hashes(out)
    assert len(done_vectors) + len(done_failures) == 16

    resumed = index_folder(mixed_gallery, out, pipeline=tiny_pipeline, batch_size=BATCH, engine="ray")
    assert resumed.reused == 16
    assert resumed.embedded == 30 - len(done_vectors)
    assert (resumed.count, len(resumed.skipped)) == (30, 2)
    after = shard_files(out)
    assert {name: after[name] for name in kept} == kept  # the shards written before are kept as they were
    assert len(after) == 4
    assert_same_index(out, local_reference)


# ------------------------------------------------------------------ failures on the cluster


def test_a_node_with_other_model_files_is_refused_in_one_line(ray_instance, mixed_gallery, tiny_models,
                                                                small_shards, tmp_path, monkeypatch):
    """A worker that loads different weights under the same path would make a mixed index: refused."""
    import tiny_models as tiny_models_mod
    from cirkit.gallery.ray_embed import RayEmbedder

    monkeypatch.setattr(tiny_models_mod, "SEED", 1)
    _, other_checkpoint = tiny_models_mod.build_tiny_clip(tmp_path / "other")
    embedder = RayEmbedder({"name": str(tiny_models.clip_config), "pretrained": str(other_checkpoint)})
    out = tmp_path / "idx"
    with pytest.raises(CirkitError) as info:
        build_index(mixed_gallery, out, tiny_clip(tiny_models), batch_size=BATCH, progress=False, embedder=embedder)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    assert "model files must be the same on every node" in message
    assert not (out / "manifest.json").exists() and shard_files(out) == {}


def test_an_address_that_does_not_answer_fails_in_one_line_and_leaves_the_index(tiny_pipeline, tmp_path):
    from cirkit.api import index_folder

    images = make_gallery(tmp_path / "images", 6)
    out = tmp_path / "idx"
    index_folder(images, out, pipeline=tiny_pipeline, batch_size=BATCH, workers=0)
    Image.new("RGB", (40, 32), (1, 2, 3)).save(images / "new.jpg")  # something to embed
    before = snapshot(out)

    with socket.socket() as closed:  # a port nothing listens on: refused
        closed.bind(("127.0.0.1", 0))
        refused_port = closed.getsockname()[1]
    with socket.socket() as silent:  # a port that accepts connections and never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        silent_port = silent.getsockname()[1]
        for address, reason in ((f"ray://127.0.0.1:{refused_port}", "refused"), (f"127.0.0.1:{silent_port}", "silent")):
            result = run_cirkit(["index", images, "--out", out, "--pipeline", tiny_pipeline, "--engine", "ray",
                                 "--ray-address", address], tmp_path)
            assert result.returncode == 1, result.stderr
            assert "Traceback" not in result.stdout + result.stderr
            (line,) = message_lines(result.stderr)
            assert line.startswith("error:") and address in line and "does not answer" in line and reason in line, line
            assert snapshot(out) == before


def test_engine_ray_without_ray_is_explained_in_one_line(tiny_pipeline, tmp_path):
    """Ray is imported only for --engine ray; where it is missing, the command says how to install it."""
    from cirkit.gallery.ray_embed import ray_missing_message

    assert "pip install 'cirkit[ray]'" in ray_missing_message()
    as_if_uninstalled = (
        "import sys\n"
        "import cirkit.api, cirkit.cli, cirkit.gallery\n"
        "assert 'ray' not in sys.modules, 'the core imported ray'\n"
        "sys.modules['ray'] = None  # as if Ray were not installed: `import ray` fails\n"
        "sys.argv = ['cirkit', *sys.argv[1:]]\n"
        "cirkit.cli.main()\n"
    )
    images = make_gallery(tmp_path / "images", 3)
    out = tmp_path / "idx"
    result = run_cirkit(["index", images, "--out", out, "--pipeline", tiny_pipeline, "--engine", "ray"], tmp_path,
                        code=as_if_uninstalled)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    (line,) = message_lines(result.stderr)
    assert line == f"error: {ray_missing_message()}"
    assert not out.exists()


def test_ray_options_need_the_ray_engine(cli, gallery, tiny_pipeline, tmp_path):
    for args, expected in (
        (["--ray-address", "auto"], "--ray-address and --ray-actors go with --engine ray"),
        (["--engine", "spark"], "unknown engine 'spark'"),
    ):
        result = cli("index", gallery, "--out", tmp_path / "idx", "--pipeline", tiny_pipeline, *args)
        assert result.exit_code == 1
        (line,) = message_lines(result.stderr)
        assert expected in line
        assert not (tmp_path / "idx").exists()
