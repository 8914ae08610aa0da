"""`cirkit query` on a user's own photos: the reference image left out of its results where the gallery
holds it, and result tables that name images by their path inside the indexed folder."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import make_gallery


@pytest.fixture(scope="module")
def deep_gallery(tiny_pipeline, tmp_path_factory):
    """A gallery whose folder's path alone is longer than an 80-column terminal, and its index."""
    from cirkit.api import index_folder

    root = tmp_path_factory.mktemp("photos") / ("holiday-pictures-" * 4) / "2026" / "summer"
    make_gallery(root, 8)
    out = tmp_path_factory.mktemp("deep-index") / "idx"
    index_folder(root, out, pipeline=tiny_pipeline)
    return root, out


def _query(cli, index, image, pipeline, *flags):
    res = cli("query", "-i", index, "--image", image, "-t", "make it red", "-p", pipeline, "-k", "8", "--json", *flags)
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)


def test_reference_inside_the_indexed_folder_is_left_out_by_default(cli, deep_gallery, tiny_pipeline):
    root, index = deep_gallery
    ref = root / "sub" / "img0003.jpg"
    run = _query(cli, index, ref, tiny_pipeline)
    paths = [r["path"] for r in run["results"]]
    assert "sub/img0003.jpg" not in paths
    assert len(paths) == 7 and [r["rank"] for r in run["results"]] == list(range(1, 8))  # the other 7, ranked from 1
    assert run["inputs"]["excluded"] == ["sub/img0003.jpg"]

    kept = _query(cli, index, ref, tiny_pipeline, "--include-reference")
    assert "sub/img0003.jpg" in [r["path"] for r in kept["results"]] and "excluded" not in kept["inputs"]
    # leaving it out changes nothing else: the others keep their order
    assert [r["path"] for r in kept["results"] if r["path"] != "sub/img0003.jpg"] == paths

    shown = cli("runs", "show", run["id"])
    assert shown.exit_code == 0 and "sub/img0003.jpg" not in shown.stdout.split("Results")[-1]


def test_reference_outside_the_folder_is_kept_unless_asked(cli, tmp_path, deep_gallery, tiny_pipeline):
    root, index = deep_gallery
    copy = tmp_path / "copy-of-img0004.jpg"
    shutil.copyfile(root / "img0004.jpg", copy)
    run = _query(cli, index, copy, tiny_pipeline)
    assert "img0004.jpg" in [r["path"] for r in run["results"]] and "excluded" not in run["inputs"]
    # asked for: the gallery's image with the same content is left out
    run = _query(cli, index, copy, tiny_pipeline, "--exclude-reference")
    assert "img0004.jpg" not in [r["path"] for r in run["results"]] and run["inputs"]["excluded"] == ["img0004.jpg"]
    assert len(run["results"]) == 7


def test_k_results_even_with_the_reference_left_out(cli, deep_gallery, tiny_pipeline):
    root, index = deep_gallery
    res = cli("query", "-i", index, "--image", root / "img0001.jpg", "-t", "make it red", "-p", tiny_pipeline, "-k", "3", "--json")
    run = json.loads(res.stdout)
    assert [r["rank"] for r in run["results"]] == [1, 2, 3] and "img0001.jpg" not in [r["path"] for r in run["results"]]


def test_table_names_images_inside_the_folder_in_80_columns(cli, monkeypatch, deep_gallery, tiny_pipeline):
    from cirkit.console import stdout

    root, index = deep_gallery
    monkeypatch.setattr(stdout, "width", 80)
    res = cli("query", "-i", index, "--image", root / "img0002.jpg", "-t", "make it red", "-p", tiny_pipeline, "-k", "8")
    assert res.exit_code == 0, res.stderr
    rows = [line for line in res.stdout.splitlines() if line.startswith("│")]
    assert len(rows) == 7
    names = {row.split("│")[-2].strip() for row in rows}
    assert names == {"img0001.jpg", "img0004.jpg", "img0005.jpg", "img0007.jpg", "sub/img0000.jpg", "sub/img0003.jpg", "sub/img0006.jpg"}
    assert str(root) in res.stdout  # the folder is named once, under the table
    assert "…" not in res.stdout
    assert "note: the reference image is in the gallery (img0002.jpg)" in res.stdout
    assert "--include-reference keeps it" in res.stdout


def test_batch_queries_note_and_rerun_keep_the_exclusion(cli, tmp_path, deep_gallery, tiny_pipeline):
    root, index = deep_gallery
    queries = tmp_path / "q.jsonl"
    queries.write_text("\n".join(json.dumps({"image": str(root / name), "text": "make it red", "id": name})
                                 for name in ("img0001.jpg", "img0002.jpg")))
    res = cli("query", "-i", index, "--queries", queries, "-p", tiny_pipeline)
    assert res.exit_code == 0, res.stderr
    assert "note: 2 of 2 reference images are in the gallery" in res.stdout
    run_id = json.loads(cli("runs", "list", "--json").stdout)[0]["id"]
    res = cli("runs", "edit", run_id, "caption", "--text", "a red square")
    assert res.exit_code == 0, res.stderr
    new = json.loads(cli("runs", "list", "--json").stdout)[0]
    shown = json.loads(cli("runs", "show", new["id"], "--json").stdout)
    assert shown["parent_id"] == run_id
    assert shown["inputs"]["excluded"] and shown["inputs"]["excluded"][0] not in [r["path"] for r in shown["results"]]


def test_the_choice_travels_to_a_cirkit_serve(tmp_path, deep_gallery):
    from cirkit.serve.protocol import QueryRequest, build_request

    root, index = deep_gallery
    for choice in (True, False, None):
        request, _ = build_request(data_dir=tmp_path, index=index, pipeline="cirevl", prompts={}, k=5, use_cache=True,
                                   raise_on_failure=True, image=root / "img0001.jpg", text="red", exclude_reference=choice)
        assert QueryRequest.model_validate_json(request.model_dump_json()).exclude_reference is choice


def test_python_api_keeps_the_reference_unless_asked(tmp_path, deep_gallery, tiny_pipeline):
    from cirkit.api import query

    root, index = deep_gallery
    ref = root / "img0005.jpg"
    common = dict(pipeline=tiny_pipeline, k=8, data_dir=tmp_path)
    assert "img0005.jpg" in [r["path"] for r in query(ref, "red", index, **common)["results"]]
    for choice in (True, None):  # None: as `cirkit query` decides, by where the reference lies
        run = query(ref, "red", index, exclude_reference=choice, **common)
        assert "img0005.jpg" not in [r["path"] for r in run["results"]] and len(run["results"]) == 7
