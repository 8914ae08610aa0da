"""Session fixtures: tiny random-weight models built locally, a small gallery, and a CLI runner.

Models are saved in their standard formats and loaded by the same code users use.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import json
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import build_tiny_blip2, build_tiny_clip, build_tiny_llm, build_tiny_qwen2vl  # noqa: E402


SHARED_BENCHMARKS = Path(__file__).resolve().parents[2] / "shared" / "benchmarks"


@pytest.fixture(scope="session")
def shared() -> Path:
    """The real benchmark annotation files, in the shared/ folder beside the repository."""
    if not (SHARED_BENCHMARKS / "README.md").is_file():
        pytest.fail(f"real benchmark annotations not found at {SHARED_BENCHMARKS}: these tests need the shared/ folder "
                    "beside the repository (shared/benchmarks)")
    return SHARED_BENCHMARKS


@dataclass
class TinyModels:
    llm: Path
    blip2: Path
    qwen2vl: Path
    clip_config: Path
    clip_checkpoint: Path


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> TinyModels:
    root = tmp_path_factory.mktemp("models")
    config, checkpoint = build_tiny_clip(root / "clip")
    return TinyModels(
        llm=build_tiny_llm(root / "llm"),
        blip2=build_tiny_blip2(root / "blip2"),
        qwen2vl=build_tiny_qwen2vl(root / "qwen2vl"),
        clip_config=config,
        clip_checkpoint=checkpoint,
    )


def write_pipeline(path: Path, models: TinyModels, *, captioner: str = "blip2", extra: str = "", **step_params) -> Path:
    """A caption -> rewrite -> embed -> search pipeline file over the tiny models."""
    caption_params = json.dumps({"num_beams": 2, "max_new_tokens": 8, **step_params.get("caption", {})})
    rewrite_params = json.dumps({"max_new_tokens": 12, **step_params.get("rewrite", {})})
    path.write_text(
        f"""name: tiny
description: tiny random-weight models, for tests
models:
  captioner: {{type: vlm, id: "{getattr(models, captioner)}"}}
  llm: {{type: llm, id: "{models.llm}"}}
  clip: {{type: clip, name: "{models.clip_config}", pretrained: "{models.clip_checkpoint}"}}
steps:
  - {{name: caption, kind: caption, model: captioner, prompt: cirevl-caption, params: {caption_params}}}
  - {{name: rewrite, kind: rewrite, model: llm, prompt: cirevl-rewrite, params: {rewrite_params}}}
  - {{name: embed, kind: embed, model: clip}}
  - {{name: search, kind: search, params: {{k: 50}}}}
{extra}"""
    )
    return path


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_models, tmp_path_factory) -> Path:
    return write_pipeline(tmp_path_factory.mktemp("pipelines") / "tiny.yaml", tiny_models)


def make_gallery(root: Path, count: int, size: tuple[int, int] = (40, 32)) -> Path:
    """`count` distinct solid-colour JPEGs, a third of them in a subfolder."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "sub").mkdir(exist_ok=True)
    for i in range(count):
        colour = ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)
        folder = root / "sub" if i % 3 == 0 else root
        Image.new("RGB", size, colour).save(folder / f"img{i:04d}.jpg", quality=95)
    return root


@pytest.fixture(scope="session")
def gallery(tmp_path_factory) -> Path:
    return make_gallery(tmp_path_factory.mktemp("gallery"), 30)


@pytest.fixture(scope="session")
def gallery_index(gallery, tiny_pipeline, tmp_path_factory) -> Path:
    from cirkit.api import index_folder

    out = tmp_path_factory.mktemp("index") / "idx"
    index_folder(gallery, out, pipeline=tiny_pipeline)
    return out


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys, tmp_path, monkeypatch):
    """Run the real `cirkit` entry point in process; the run store lives in a per-test directory."""
    from cirkit.cli import main

    monkeypatch.setenv("CIRKIT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("COLUMNS", "200")
    # queries run here, never through a `cirkit serve` that happens to run on this machine
    monkeypatch.setenv("CIRKIT_PORT", str(free_port()))
    monkeypatch.delenv("CIRKIT_SERVER", raising=False)

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["cirkit", *map(str, args)])
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run


@pytest.fixture
def engine_calls_counter(monkeypatch):
    """(model id, number of requests) of every generation call, through the real transformers engine."""
    from cirkit.engines.transformers_engine import TransformersEngine

    calls = []
    real = TransformersEngine.generate

    def counting(self, requests, params, on_batch=None, **options):
        calls.append((self.model_id, len(requests)))
        return real(self, requests, params, on_batch, **options)

    monkeypatch.setattr(TransformersEngine, "generate", counting)
    return calls


SERVE_START_LIMIT = 180.0  # seconds for `transformers serve` to answer /health


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def transformers_server(tmp_path_factory):
    """`transformers serve` on 127.0.0.1 (a free port), CPU, offline; killed at the end of the session."""
    from transformers.utils.import_utils import is_serve_available

    if not is_serve_available():
        pytest.skip("`transformers serve` needs transformers[serving] (pip install -e '.[dev]')")
    port = free_port()
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "NO_PROXY": "127.0.0.1,localhost"}
    code = "import sys; from transformers.cli.transformers import main; sys.argv[0] = 'transformers'; main()"
    cmd = [sys.executable, "-c", code, "serve", "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    cmd += ["--log-level", "warning"]
    import httpx

    start = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"transformers serve exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() - start > SERVE_START_LIMIT:
                pytest.fail(f"transformers serve not ready after {SERVE_START_LIMIT:g}s: {log_path.read_text()[-2000:]}")
            time.sleep(0.2)
        startup = time.monotonic() - start
        print(f"\ntransformers serve ready in {startup:.1f}s", file=sys.stderr)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


@pytest.fixture(scope="session")
def tiny_judge(tiny_models, tmp_path_factory) -> Path:
    """The tiny Qwen2-VL made to answer "yes" or "no" (see tiny_models.build_tiny_judge)."""
    from tiny_models import build_tiny_judge

    return build_tiny_judge(tiny_models.qwen2vl, tmp_path_factory.mktemp("models") / "judge")


class CtrlCAfter:
    """The real CLIP model, with a Ctrl-C arriving while it embeds batch number `at` (1-based)."""

    def __init__(self, clip, at: int):
        self._clip, self._at, self.calls = clip, at, 0

    def __getattr__(self, name):
        return getattr(self._clip, name)

    def encode_images(self, pixels):
        self.calls += 1
        if self.calls == self._at:
            raise KeyboardInterrupt
        return self._clip.encode_images(pixels)


def synthetic_index(vectors: dict[str, list[float]]):
    """A GalleryIndex over the given vectors (path -> vector), with an exact FAISS index and no files."""
    import faiss
    import numpy as np

    from cirkit.gallery import GalleryIndex

    matrix = np.array(list(vectors.values()), dtype=np.float32)
    flat = faiss.IndexFlatIP(matrix.shape[1])
    flat.add(matrix)
    manifest = {"root": "/g", "entries": [{"path": p} for p in vectors], "model": {}}
    return GalleryIndex(None, manifest, matrix, flat)
