"""Index types (cirkit.gallery.ann and `cirkit index --index-type`): flat, HNSW and IVF-PQ, chosen by size.

The module is tested on synthetic clustered vectors (IVF-PQ needs >= 10,000 to train); the gallery
parts through the real `cirkit index` with the tiny CLIP.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest

from cirkit.gallery import ann
from cirkit.errors import CirkitError
from cirkit.gallery import GalleryIndex

DIM = 32
N = 12_000  # above ann.IVFPQ_MIN


def clustered(n: int, dim: int, clusters: int, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + noise * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def easy() -> tuple[np.ndarray, np.ndarray]:
    """(gallery, queries): well separated clusters of ~60 vectors; each query is a perturbed gallery vector."""
    x = clustered(N, DIM, 200, 0.15, seed=0)
    rng = np.random.default_rng(1)
    q = x[rng.choice(N, 50, replace=False)] + 0.02 * rng.standard_normal((50, DIM)).astype(np.float32)
    return x, q / np.linalg.norm(q, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def built(easy) -> dict[str, tuple[ann.IndexSpec, object]]:
    x, _ = easy
    out = {}
    for kind in ("flat", "hnsw", "ivfpq"):
        spec = ann.choose(kind, len(x), DIM)
        index = ann.build(x, spec)
        out[kind] = (spec, index)
    return out


# ------------------------------------------------------------------ the module on synthetic vectors


def test_each_type_builds_the_faiss_index_it_names(easy, built):
    x, _ = easy
    expected = {"flat": faiss.IndexFlatIP, "hnsw": faiss.IndexHNSWFlat, "ivfpq": faiss.IndexIVFPQ}
    for kind, (spec, index) in built.items():
        assert spec.type == kind
        assert isinstance(faiss.downcast_index(index), expected[kind])
        assert index.ntotal == len(x) and index.metric_type == faiss.METRIC_INNER_PRODUCT
    ivf = faiss.downcast_index(built["ivfpq"][1])
    spec = built["ivfpq"][0]
    assert (ivf.nlist, ivf.nprobe, ivf.pq.M, ivf.pq.nbits) == (
        spec.params["nlist"], spec.params["nprobe"], spec.params["pq_m"], spec.params["pq_bits"]
    )
    assert faiss.downcast_index(built["hnsw"][1]).hnsw.efSearch == built["hnsw"][0].params["ef_search"]


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq"])
def test_approximate_types_return_the_flat_top_results_with_exact_cosines(easy, built, kind):
    x, q = easy
    flat_spec, flat = built["flat"]
    spec, index = built[kind]
    want_scores, want_ids = ann.search(flat, x, flat_spec, q, 10)
    scores, ids = ann.search(index, x, spec, q, 10)
    assert np.array_equal(ids, want_ids)
    # re-scored from the stored vectors: the exact cosines, the numbers flat gives
    exact = np.einsum("qkd,qd->qk", x[ids].astype(np.float64), q.astype(np.float64))
    assert np.allclose(scores, exact, atol=1e-5)
    assert np.allclose(scores, want_scores, atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 0)


def test_without_rescoring_ivfpq_scores_are_not_exact(easy, built):
    """The re-scoring is what makes the scores exact: PQ's own distances are approximations."""
    x, q = easy
    spec, index = built["ivfpq"]
    raw_scores, raw_ids = index.search(q, 10)
    exact = np.einsum("qkd,qd->qk", x[raw_ids], q)
    assert np.abs(raw_scores - exact).max() > 1e-3
    scores, ids = ann.search(index, x, spec, q, 10)
    assert np.abs(scores - np.einsum("qkd,qd->qk", x[ids], q)).max() < 1e-5


def test_rescoring_depth_is_configurable_and_reaches_past_k(easy, built):
    """A deeper candidate list can only find better (or equal) top results."""
    x, q = easy
    spec, index = built["ivfpq"]
    shallow = ann.IndexSpec("ivfpq", {**spec.params, "rescore_depth": 1, "nprobe": 1})
    deep = ann.IndexSpec("ivfpq", {**spec.params, "rescore_depth": 400, "nprobe": 1})
    s1, _ = ann.search(index, x, shallow, q, 10)
    s2, _ = ann.search(index, x, deep, q, 10)
    assert np.all(s2 >= s1 - 1e-6)
    s3, _ = ann.search(index, x, spec, q, 10, rescore_depth=400)
    assert np.all(s3 >= s1 - 1e-6)


def test_ivfpq_probes_more_lists_when_the_probed_ones_hold_fewer_than_k(easy, built):
    x, q = easy
    spec, index = built["ivfpq"]
    narrow = ann.IndexSpec("ivfpq", {**spec.params, "nprobe": 1})
    k = 500  # far more than one list holds (12,000 vectors in 256 lists)
    scores, ids = ann.search(index, x, narrow, q[:3], k)
    assert ids.shape == (3, k) and np.all(ids >= 0)
    assert all(len(set(row)) == k for row in ids)
    assert np.allclose(scores, np.einsum("qkd,qd->qk", x[ids], q[:3]), atol=1e-5)


def test_ivfpq_training_is_deterministic(easy, built):
    x, _ = easy
    spec, index = built["ivfpq"]
    again = ann.build(x, spec)
    assert np.array_equal(faiss.serialize_index(index), faiss.serialize_index(again))


def test_auto_picks_flat_below_a_million_and_ivfpq_from_there():
    assert ann.choose("auto", 30, 512).type == "flat"
    assert ann.choose("auto", ann.AUTO_FLAT_MAX - 1, 768).type == "flat"
    big = ann.choose("auto", ann.AUTO_FLAT_MAX, 768)
    assert big.type == "ivfpq"
    assert big.params["nlist"] == 2048 and big.params["pq_m"] == 96 and big.params["nprobe"] <= big.params["nlist"]
    assert ann.choose("ivfpq", 10_000_000, 768).params["nlist"] > big.params["nlist"]
    assert ann.choose("hnsw", 1000, 768).params["M"] < ann.choose("hnsw", 1_000_000, 768).params["M"]
    assert ann.choose("ivfpq", 1_000_000, 768, {"nprobe": 7}).params["nprobe"] == 7


def test_ivfpq_refuses_a_gallery_too_small_to_train():
    with pytest.raises(CirkitError) as info:
        ann.choose("ivfpq", ann.IVFPQ_MIN - 1, 768)
    message = str(info.value)
    assert "\n" not in message and "flat" in message and str(ann.IVFPQ_MIN) in message


def test_bad_types_and_params_are_refused():
    with pytest.raises(CirkitError, match="unknown index type 'annoy'"):
        ann.choose("annoy", 100, 32)
    with pytest.raises(CirkitError, match="efSearch"):
        ann.choose("hnsw", 100, 32, {"efSearch": 64})
    with pytest.raises(CirkitError, match="must divide"):
        ann.choose("ivfpq", 20_000, 32, {"pq_m": 5})


# ------------------------------------------------------------------ the gallery index and `cirkit index`


def read_manifest(directory: Path) -> dict:
    return json.loads((directory / "manifest.json").read_text())


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got: {stderr!r}"
    return lines[0]


def all_hits(index: GalleryIndex, k: int) -> list[list[tuple[str, float]]]:
    """Each gallery vector as a query: its top k (path, score)."""
    return [[(h["path"], h["score"]) for h in hits] for hits in index.search(np.asarray(index.vectors), k)]


def test_switching_types_rebuilds_from_cached_vectors(cli, gallery, tiny_pipeline, tmp_path):
    out = tmp_path / "idx"
    args = ("index", gallery, "--out", out, "--pipeline", tiny_pipeline)
    first = cli(*args)
    assert first.exit_code == 0, first.stderr
    assert "index: flat" in first.stdout
    manifest = read_manifest(out)
    assert (manifest["index_type"], manifest["index_choice"], manifest["index_params"]) == ("flat", "auto", {})
    flat_hits = all_hits(GalleryIndex.open(out), 5)

    hnsw = cli(*args, "--index-type", "hnsw")
    assert hnsw.exit_code == 0, hnsw.stderr
    assert "0 embedded" in hnsw.stdout and "index: hnsw (M=16" in hnsw.stdout
    manifest = read_manifest(out)
    assert manifest["index_type"] == "hnsw" and manifest["index_choice"] == "hnsw"
    assert manifest["index_params"] == ann.choose("hnsw", manifest["count"], manifest["dim"]).params
    assert manifest["index_file"].endswith("-hnsw.faiss")
    assert [p.name for p in out.glob("index-*.faiss")] == [manifest["index_file"]]  # the flat file is gone
    opened = GalleryIndex.open(out)
    assert isinstance(faiss.downcast_index(opened.faiss_index), faiss.IndexHNSWFlat)
    hits = all_hits(opened, 5)
    assert [[p for p, _ in row] for row in hits] == [[p for p, _ in row] for row in flat_hits]
    assert np.allclose([[s for _, s in row] for row in hits], [[s for _, s in row] for row in flat_hits], atol=1e-5)

    # the same command without --index-type keeps the type, and the index file as it is
    index_bytes = (out / manifest["index_file"]).read_bytes()
    again = cli(*args)
    assert again.exit_code == 0, again.stderr
    assert "index: hnsw" in again.stdout and "unchanged" in again.stdout
    assert read_manifest(out)["index_type"] == "hnsw"
    assert (out / manifest["index_file"]).read_bytes() == index_bytes

    back = cli(*args, "--index-type", "auto")
    assert back.exit_code == 0, back.stderr
    assert "0 embedded" in back.stdout and "index: flat" in back.stdout
    manifest = read_manifest(out)
    assert (manifest["index_type"], manifest["index_choice"]) == ("flat", "auto")
    assert isinstance(faiss.downcast_index(GalleryIndex.open(out).faiss_index), faiss.IndexFlatIP)


def test_ivfpq_on_a_small_gallery_is_refused_and_leaves_the_index_as_it_was(cli, gallery, tiny_pipeline, tmp_path):
    out = tmp_path / "idx"
    assert cli("index", gallery, "--out", out, "--pipeline", tiny_pipeline).exit_code == 0
    before = snapshot(out)
    result = cli("index", gallery, "--out", out, "--pipeline", tiny_pipeline, "--index-type", "ivfpq")
    assert result.exit_code != 0
    assert "Traceback" not in result.stdout + result.stderr
    line = one_error_line(result.stderr)
    assert "ivfpq" in line and "--index-type flat" in line
    assert snapshot(out) == before
    assert GalleryIndex.open(out).index_spec.type == "flat"

    fresh = tmp_path / "fresh"
    result = cli("index", gallery, "--out", fresh, "--pipeline", tiny_pipeline, "--index-type", "ivfpq")
    assert result.exit_code != 0 and "--index-type flat" in one_error_line(result.stderr)
    assert not fresh.exists()


def test_unknown_index_type_is_one_line(cli, gallery, tiny_pipeline, tmp_path):
    result = cli("index", gallery, "--out", tmp_path / "idx", "--pipeline", tiny_pipeline, "--index-type", "annoy")
    assert result.exit_code != 0
    line = one_error_line(result.stderr)
    assert "annoy" in line and "hnsw" in line and "ivfpq" in line


def test_manifest_without_index_fields_opens_as_flat(gallery_index, cli, gallery, tiny_pipeline, tmp_path):
    """An index written before index types: no index_params/choice (or no index_type at all) = flat."""
    out = tmp_path / "old"
    shutil.copytree(gallery_index, out)
    manifest = read_manifest(out)
    for key in ("index_type", "index_params", "index_choice", "index_overrides"):
        manifest.pop(key, None)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    reference = all_hits(GalleryIndex.open(gallery_index), 3)

    old = GalleryIndex.open(out)
    assert old.index_spec == ann.IndexSpec("flat", {})
    assert all_hits(old, 3) == reference

    # updating it keeps it flat (auto, at this size) and keeps its index file
    index_file = manifest["index_file"]
    result = cli("index", gallery, "--out", out, "--pipeline", tiny_pipeline)
    assert result.exit_code == 0, result.stderr
    assert "0 embedded" in result.stdout and "index: flat" in result.stdout and "unchanged" in result.stdout
    updated = read_manifest(out)
    assert (updated["index_type"], updated["index_file"]) == ("flat", index_file)
    assert all_hits(GalleryIndex.open(out), 3) == reference


def test_index_folder_api_builds_hnsw_with_overrides(gallery, tiny_pipeline, tmp_path):
    from cirkit.api import index_folder

    report = index_folder(gallery, tmp_path / "idx", pipeline=tiny_pipeline, index_type="hnsw",
                          index_params={"M": 8, "rescore_depth": 20})
    assert report.index.type == "hnsw" and report.index.params["M"] == 8
    manifest = read_manifest(tmp_path / "idx")
    assert manifest["index_params"]["M"] == 8 and manifest["index_overrides"] == {"M": 8, "rescore_depth": 20}
    opened = GalleryIndex.open(tmp_path / "idx")
    assert faiss.downcast_index(opened.faiss_index).hnsw.nb_neighbors(0) == 2 * 8  # level 0 holds 2*M links
