"""Declarative pipelines: YAML files that name models and list steps, and the runner."""

from cirkit.pipelines.spec import Pipeline, builtin_names, load_pipeline

DEFAULT_PIPELINE = "cirevl"

__all__ = ["DEFAULT_PIPELINE", "Pipeline", "builtin_names", "load_pipeline"]
