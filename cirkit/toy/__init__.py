"""The toy world: a procedural image world (cirkit/toy/world.py), a composed-retrieval benchmark in
CIRR's format (cirkit/toy/benchmark.py), and small models that really work in it (cirkit/toy/models,
trained by scripts/train_toy_models.py). They make `cirkit demo` and the end-to-end quality test run
offline with meaningful results; the built-in pipeline `toy` uses the models.
"""

from pathlib import Path

MODELS_DIR = Path(__file__).parent / "models"
