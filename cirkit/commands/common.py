"""What the command modules share: the run store from the global options, and result printing."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from cirkit.console import stdout
from cirkit.errors import CirkitError, one_line

DataDir = Annotated[
    Optional[Path],
    typer.Option("--data-dir", envvar="CIRKIT_DATA_DIR", help="Where the run store lives (default: the user data dir)."),
]


PipelineRef = Annotated[str, typer.Option("--pipeline", "-p", help="Built-in pipeline name or pipeline file.")]
PromptSwaps = Annotated[
    Optional[list[str]],
    typer.Option("--prompt", help="Swap a step's template: STEP=NAME_OR_FILE (repeat a step for an ensemble)."),
]
NoCache = Annotated[bool, typer.Option("--no-cache", help="Run every step again, even where the cache has its output.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
Prices = Annotated[
    Optional[Path],
    typer.Option("--prices", help="A YAML price table {model id: {input: PRICE, output: PRICE}} per 1M tokens: show costs."),
]
ModelOverrides = Annotated[
    Optional[list[str]],
    typer.Option(
        "--model", metavar="NAME=SPEC",
        help="Replace the pipeline's model entry NAME for this call; SPEC in YAML flow style, e.g. "
             "'llm={id: Qwen/Qwen2.5-1.5B-Instruct}' or 'clip={name: ViT-B-32, pretrained: openai}'. Repeatable.",
    ),
]


def open_store(ctx: typer.Context):
    from cirkit.store import RunStore

    return RunStore(ctx.obj["data_dir"])


def print_results(results: list[dict[str, Any]], title: str = "Results") -> None:
    """The ranked images, named by their path inside the indexed folder (named once, under the table),
    so that the names fit an 80-column terminal."""
    judged = any("verifier" in r for r in results)  # reranked: the judge's P(yes) beside the score
    root = _common_root(results)
    table = Table("rank", "score", *(["P(yes)"] if judged else []), "image", title=title,
                  caption=f"in {escape(root)}" if root else None, caption_justify="left")
    for r in results:
        verifier = [f"{r['verifier']:.3f}" if r.get("verifier") is not None else "-"] if judged else []
        table.add_row(str(r["rank"]), f"{r['score']:.4f}", *verifier, escape(r["path"] if root else r["file"]))
    stdout.print(table)


def _common_root(results: list[dict[str, Any]]) -> str | None:
    """The indexed folder the results' paths are relative to, or None when they do not share one."""
    roots = set()
    for r in results:
        file, path = str(r.get("file") or ""), str(r.get("path") or "")
        if not path or not file.endswith(path):
            return None
        roots.add(file[: len(file) - len(path)].rstrip("/\\") or "/")
    return roots.pop() if len(roots) == 1 else None


def summarize(value: Any) -> str:
    if is_vectors(value):
        return f"{len(value)} vector(s) of {len(value[0])} floats"
    if isinstance(value, list) and value and isinstance(value[0], dict) and "rank" in value[0]:
        top = value[0]
        return f"{len(value)} ranked images (top: {top['path']} {top['score']:.4f})"
    return str(value)


def is_vectors(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], list) and bool(value[0]) and isinstance(value[0][0], float)


def compact(run: dict[str, Any]) -> dict[str, Any]:
    """A run for --json output: vectors replaced by a summary (`runs show --json` has them all)."""
    for step in run["steps"]:
        step["outputs"] = {key: (summarize(v) if is_vectors(v) else v) for key, v in step["outputs"].items()}
    return run


def parse_prompt_swaps(items: list[str]) -> dict[str, list[str]]:
    """STEP=TEMPLATE flags; naming a step twice gives it an ensemble of templates."""
    swaps: dict[str, list[str]] = {}
    for item in items:
        step, sep, template = item.partition("=")
        if not sep or not step.strip() or not template.strip():
            raise CirkitError(f"--prompt expects STEP=TEMPLATE, got '{item}'")
        swaps.setdefault(step.strip(), []).append(template.strip())
    return swaps


def parse_model_overrides(items: list[str] | None) -> dict[str, dict[str, Any]]:
    """`--model NAME=SPEC` flags: SPEC is the model entry in YAML flow style, e.g. `llm={id: Qwen/Qwen2.5-1.5B-Instruct}`."""
    overrides: dict[str, dict[str, Any]] = {}
    for item in items or []:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not name or not text.strip():
            raise CirkitError(f"--model expects NAME=SPEC, e.g. 'llm={{id: Qwen/Qwen2.5-1.5B-Instruct}}', got '{item}'")
        import yaml

        try:
            entry = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise CirkitError(f"--model {name}: not a YAML mapping: {one_line(exc)}") from None
        if not isinstance(entry, dict) or not entry:
            raise CirkitError(f"--model {name}: SPEC must be a mapping such as '{{id: Qwen/Qwen2.5-1.5B-Instruct}}', got '{text}'")
        for key in ("id", "name", "pretrained"):  # paths on the command line are relative to where it runs
            value = entry.get(key)
            if isinstance(value, str) and value and Path(value).expanduser().exists():
                entry[key] = str(Path(value).expanduser().resolve())
        if name in overrides:
            raise CirkitError(f"--model names '{name}' twice")
        overrides[name] = entry
    return overrides
