"""The toy world end to end: retrieval quality through the full caption -> rewrite -> embed -> search
pipeline, with the shipped toy models (cirkit/toy/models), on the toy benchmark's held-out queries.

The toy models were trained by scripts/train_toy_models.py, which never saw a gallery rendering nor a
(reference scene, target scene) pair of the benchmark. The quality thresholds fail when the
orchestration is wrong: a bad normalization, a wrong index mapping, a prompt rendered wrongly, a
vector fused wrongly. The two naive baselines (the modification text alone, the reference image
alone) must score clearly lower: it is the composition that retrieves.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import random
from pathlib import Path

import numpy as np
import pytest

import cirkit.toy
from cirkit.toy import benchmark as toy
from cirkit.toy.world import all_scenes, parse_caption, render, seed_for

MODELS = Path(cirkit.toy.__file__).parent / "models"
REPO = Path(__file__).resolve().parents[1]


def _recall(rankings: list[list[str]], targets: list[str], k: int) -> float:
    return sum(target in ranking[:k] for ranking, target in zip(rankings, targets)) / len(targets)


@pytest.fixture(scope="session")
def toy_world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toy-world")
    toy.write_benchmark(root)
    return root


@pytest.fixture(scope="session")
def toy_index(toy_world, tmp_path_factory) -> Path:
    from cirkit.api import index_folder

    out = tmp_path_factory.mktemp("toy-index") / "idx"
    index_folder(toy.images_root(toy_world), out, pipeline="toy")
    return out


@pytest.fixture(scope="session")
def toy_eval(toy_world, toy_index, tmp_path_factory):
    """Every benchmark query through the `toy` pipeline, batched: (queries, runs, rankings, targets).

    Rankings are gallery paths relative to the index root, the reference dropped (CIRR's protocol)."""
    from cirkit.api import query_many
    from cirkit.pipelines.runner import Query

    queries = toy.queries()
    names = toy.gallery_names()
    folder = toy.images_root(toy_world) / toy.FOLDER
    batch = [Query(folder / f"{names[q.reference]}.png", q.modification.text, str(q.pairid)) for q in queries]
    runs = query_many(batch, toy_index, pipeline="toy", k=10, data_dir=tmp_path_factory.mktemp("toy-data"))
    references = [f"{toy.FOLDER}/{names[q.reference]}.png" for q in queries]
    targets = [f"{toy.FOLDER}/{names[q.target]}.png" for q in queries]
    rankings = [[hit["path"] for hit in run["results"] if hit["path"] != ref] for run, ref in zip(runs, references)]
    return queries, runs, rankings, targets, references


def test_full_pipeline_retrieves_the_targets(toy_eval):
    queries, runs, rankings, targets, _ = toy_eval
    assert len(queries) >= 200
    assert [r["status"] for r in runs] == ["ok"] * len(runs), next(r["error"] for r in runs if r["status"] != "ok")
    r1, r5 = _recall(rankings, targets, 1), _recall(rankings, targets, 5)
    assert r1 >= 0.8, f"Recall@1 {r1:.3f} < 0.8 (Recall@5 {r5:.3f})"
    assert r5 >= 0.95, f"Recall@5 {r5:.3f} < 0.95 (Recall@1 {r1:.3f})"


def test_every_intermediate_is_right_and_rendered_as_the_template_says(toy_eval):
    queries, runs, _, _, _ = toy_eval
    captions = rewrites = 0
    for q, run in zip(queries, runs):
        steps = {s["name"]: s for s in run["steps"]}
        caption = steps["caption"]["outputs"]["caption"]
        captions += caption == q.reference.caption
        rewrite = steps["rewrite"]
        assert rewrite["prompts"][0] == [{"role": "user", "content": f"Instruction: {q.modification.text}\nImage Content: {caption}"}]
        rewrites += rewrite["outputs"]["description"] == q.target.caption
        assert steps["embed"]["prompts"] == [rewrite["outputs"]["description"]]
    assert captions / len(queries) >= 0.95, f"captions right: {captions}/{len(queries)}"
    assert rewrites / len(queries) >= 0.85, f"rewrites right: {rewrites}/{len(queries)}"


def test_both_naive_baselines_score_clearly_lower(toy_eval, toy_index):
    """Retrieving by the modification text alone, or by the reference image alone, fails: the
    composition (caption -> rewrite) is what retrieves."""
    from cirkit.engines.open_clip_engine import ClipModel
    from cirkit.gallery import GalleryIndex
    from cirkit.pipelines import load_pipeline

    queries, _, rankings, targets, references = toy_eval
    full_r1, full_r5 = _recall(rankings, targets, 1), _recall(rankings, targets, 5)
    index = GalleryIndex.open(toy_index)
    spec = load_pipeline("toy").clip_model()
    clip = ClipModel(spec.name, spec.pretrained, device=spec.device, dtype=spec.dtype)

    text_vectors, _ = clip.encode_texts([q.modification.text for q in queries])
    row_of = {path: i for i, path in enumerate(index.paths)}
    image_vectors = np.stack([index.vectors[row_of[ref]] for ref in references])
    baselines = {}
    for name, vectors in (("text only", text_vectors), ("image only", image_vectors)):
        hits = index.search(vectors, 11)
        ranked = [[h["path"] for h in row if h["path"] != ref] for row, ref in zip(hits, references)]
        baselines[name] = (_recall(ranked, targets, 1), _recall(ranked, targets, 5))
    summary = f"full {full_r1:.3f}/{full_r5:.3f}; " + "; ".join(f"{k} {a:.3f}/{b:.3f}" for k, (a, b) in baselines.items())
    for r1, r5 in baselines.values():
        assert r1 <= full_r1 - 0.4, summary
        assert r5 <= full_r5 - 0.3, summary


def test_shipped_models_are_those_the_training_script_wrote():
    record = json.loads((MODELS / "training.json").read_text())
    shipped = {
        p.relative_to(MODELS).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(MODELS.rglob("*"))
        if p.is_file() and p.name != "training.json" and "__pycache__" not in p.parts and p.relative_to(MODELS).parts[0] != "hard"
    }
    assert shipped == record["files"], "cirkit/toy/models differs from what scripts/train_toy_models.py wrote: re-run it"
    # the world the models were trained for is this one (captions, names, queries)
    assert record["world_fingerprint"] == toy.fingerprint(), "the toy world changed: re-run scripts/train_toy_models.py"
    assert sum(p.stat().st_size for p in MODELS.rglob("*") if p.is_file()) <= 20_000_000
    assert sum(record["training_seconds"].values()) <= 15 * 60


def test_training_data_holds_out_the_benchmark():
    spec = importlib.util.spec_from_file_location("train_toy_models", REPO / "scripts" / "train_toy_models.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    held_out = toy.held_out_pairs()
    assert len(held_out) == len(toy.queries())
    examples = script.rewrite_examples(random.Random(0), held_out, 3000)
    pairs = set()
    for messages, answer in examples:
        text = messages[0]["content"]
        caption = text.split("Image Content: ", 1)[1]
        pairs.add((parse_caption(caption), parse_caption(answer.removeprefix("Edited Description: "))))
    assert None not in {a for a, _ in pairs} | {b for _, b in pairs}
    assert not pairs & held_out
    # training renderings use other seeds than the gallery's
    scene = all_scenes()[0]
    gallery = toy.gallery_image(scene).tobytes()
    assert all(render(scene, seed_for("train", r, scene.slug)).tobytes() != gallery for r in range(script.CLIP_RENDERS))


def test_benchmark_reads_as_cirr(toy_world):
    from cirkit.benchmarks import load

    bench = load("cirr", toy_world, "val")
    queries = toy.queries()
    names = toy.gallery_names()
    assert len(bench.queries) == len(queries) and len(bench.gallery) == len(all_scenes())
    assert bench.check_images().missing == ()
    for loaded, q in zip(bench.queries, queries):
        assert loaded.reference == names[q.reference]
        assert loaded.targets == (names[q.target],)
        assert loaded.text == q.modification.text
        assert len(loaded.candidates) == 6 and names[q.target] in loaded.candidates


def test_world_is_deterministic_and_captions_parse(tmp_path):
    scenes = all_scenes()
    assert len(set(toy.gallery_names().values())) == len(scenes) == 540
    assert all(parse_caption(s.caption) == s for s in scenes)
    assert toy.gallery_image(scenes[7]).tobytes() == toy.gallery_image(scenes[7]).tobytes()
    assert toy.queries() == toy.queries()
    a, b = tmp_path / "a", tmp_path / "b"
    toy.write_benchmark(a)
    toy.write_benchmark(b)
    assert toy.captions_path(a).read_bytes() == toy.captions_path(b).read_bytes()


# ---------------------------------------------------------------- the demo


def test_demo_refuses_an_unrelated_non_empty_directory(tmp_path):
    from cirkit.demo import run_demo
    from cirkit.errors import CirkitError

    (tmp_path / "thesis.tex").write_text("precious")
    with pytest.raises(CirkitError, match="not empty and is not a cirkit demo directory"):
        run_demo(tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis.tex"]
    file = tmp_path / "thesis.tex"
    with pytest.raises(CirkitError, match="is a file"):
        run_demo(file, progress=False)


def test_demo_reruns_cleanly_after_an_interruption(tmp_path):
    from rich.console import Console

    from cirkit.demo import MARKER, run_demo

    demo = tmp_path / "demo"
    # what an interrupted first run leaves: the marker, part of the images, a temporary file, an
    # index directory created but never written
    demo.mkdir()
    (demo / MARKER).write_text("{}")
    toy.write_benchmark(demo)
    images = sorted((toy.images_root(demo) / toy.FOLDER).glob("*.png"))
    for path in images[::2]:
        path.unlink()
    images[1].write_bytes(images[1].read_bytes()[:100])  # a truncated image
    (images[3].parent / f".tmp-123-{images[3].name}").write_bytes(b"partial")
    toy.captions_path(demo).unlink()
    (demo / "index" / "cache").mkdir(parents=True)

    console = Console(record=True, width=200)
    first = run_demo(demo, progress=False, console=console, eval_limit=40)
    text = console.export_text()
    for heading in ("Toy world", "Gallery index", "Composed queries", "Evaluation", "R@1", "R@5"):
        assert heading in text
    assert "caption:  a large red circle on the left of a black background" in text
    assert first["recall@1"] >= 0.8 and first["recall@5"] >= 0.95, first["metrics"]
    assert all(q["status"] == "ok" for q in first["queries"])
    assert sum(q["target_rank"] == 1 for q in first["queries"]) >= 3
    assert sorted(p.name for p in (toy.images_root(demo) / toy.FOLDER).iterdir()) == sorted(
        f"{n}.png" for n in toy.gallery_names().values()
    )

    second = run_demo(demo, progress=False, console=Console(record=True, width=200), eval_limit=40)
    assert second["metrics"]["R@1"] == first["metrics"]["R@1"]


def test_demo_command_takes_the_data_dir_and_a_limit(tmp_path, cli):
    store = tmp_path / "store"
    result = cli("--data-dir", store, "demo", "--dir", tmp_path / "demo", "--limit", "10")
    assert result.exit_code == 0, result.stderr
    assert "on 10 held-out toy queries" in result.stdout and f"--data-dir {store}" in result.stdout
    assert not (tmp_path / "demo" / "runs").exists()
    listed = cli("--data-dir", store, "eval", "list")
    assert "toy" in listed.stdout and "R@1=" in listed.stdout


def _on_toy_models(name: str, out: Path) -> Path:
    """A built-in pipeline's steps and parameters, with the toy models and the toy templates.

    The captioner, LLM and CLIP become the toy ones. A judge becomes the toy captioner: a BLIP with a
    104-word vocabulary and 32 positions, so it gets a short candidate-only question; it is no
    verifier (the toy world has none), but its P(yes) goes through the whole rerank step."""
    import yaml

    from cirkit.pipelines.spec import builtin_path

    toy_models = yaml.safe_load(builtin_path("toy").read_text())["models"]
    spec = yaml.safe_load(builtin_path(name).read_text())
    by_type = {"vlm": toy_models["captioner"], "llm": toy_models["llm"], "clip": toy_models["clip"]}
    for key, model in spec["models"].items():
        spec["models"][key] = {**by_type[model["type"]]}
        for field in ("id", "name", "pretrained"):
            if field in spec["models"][key] and spec["models"][key][field].startswith(".."):
                spec["models"][key][field] = str((builtin_path("toy").parent / spec["models"][key][field]).resolve())
    (out / "toy-judge.yaml").write_text('name: toy-judge\nvariables: [description]\ntemplate: "q: {description}? yes or no."\n')
    templates = {"caption": "toy-caption", "rewrite": "toy-rewrite", "rerank": str(out / "toy-judge.yaml")}
    for step in spec["steps"]:
        if step["kind"] in templates:
            prompt = step["prompt"]
            step["prompt"] = [templates[step["kind"]]] * len(prompt) if isinstance(prompt, list) else templates[step["kind"]]
        if step["kind"] in ("caption", "rewrite"):
            toy_step = next(s for s in yaml.safe_load(builtin_path("toy").read_text())["steps"] if s["kind"] == step["kind"])
            step["params"] = {**toy_step["params"], **{k: v for k, v in step["params"].items() if k in ("n", "temperature", "top_p", "seed")}}
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_every_builtin_pipeline_runs_end_to_end_on_the_toy_world(toy_world, tmp_path, cli):
    """Each built-in pipeline, on toy models, evaluated on the toy benchmark through `cirkit eval`;
    the metrics of all of them then appear in `cirkit eval list`."""
    from cirkit.pipelines import builtin_names

    names = builtin_names()
    assert {"cirevl", "cirevl-ensemble", "cirevl-pdv", "cirevl-rerank", "full"} <= set(names)
    from cirkit.engines import ModelPool
    from cirkit.pipelines import load_pipeline
    from cirkit.pipelines.gallery_captions import caption_gallery

    # The toy world has no multimodal model that reasons, writes propositions or reads a grid, and no
    # image editor: the pipelines built on those steps run end to end on tiny random-weight models in
    # test_sota.py.
    needs_more = {"osrcir", "imagescope", "square", "wiser"}
    assert needs_more <= set(names)
    recalls = {}
    for name in (n for n in names if n != "toy" and not n.startswith("toy-hard-") and n not in needs_more):
        path = _on_toy_models(name, tmp_path)
        pipeline = load_pipeline(path)
        if (tmp_path / "idx").is_dir() and any(s.kind == "feedback" or getattr(s.params, "gallery_captions", 0) for s in pipeline.steps):
            caption_gallery(tmp_path / "idx", pipeline, ModelPool(), progress=False)  # as `cirkit index --captions` does
        result = cli("eval", "cirr", "--data", toy_world, "--split", toy.SPLIT, "--pipeline", path, "--index", tmp_path / "idx", "--limit", "40", "--json")
        assert result.exit_code == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["failed_runs"] == 0, cli("runs", "failures", report["experiment"]).stdout
        recalls[name] = report["metrics"]["R@1"], report["metrics"]["R@5"]
    table = cli("eval", "list")
    assert table.exit_code == 0
    for name, (r1, r5) in recalls.items():
        assert any(name in line and f"R@1={r1:.2f}" in line for line in table.stdout.splitlines()), (name, table.stdout)
    print("\n" + table.stdout)
    # the composition retrieves with every pipeline that embeds a described target (R@5 in percent
    # over 40 held-out queries); WeiMoCIR embeds the modification text itself, which the toy CLIP,
    # trained on whole scene descriptions only, does not place near any image
    assert all(r5 >= 60 for name, (_, r5) in recalls.items() if name != "weimocir"), str(recalls)
