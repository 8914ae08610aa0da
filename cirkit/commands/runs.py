"""`cirkit runs`: inspect, edit, re-run, compare and export stored runs."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import tempfile
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from cirkit.commands.common import ModelOverrides, NoCache, Prices, PromptSwaps, open_store, parse_prompt_swaps, print_results, summarize
from cirkit.console import stderr, stdout
from cirkit.errors import CirkitError, one_line

runs_app = typer.Typer(help="Inspect and fix stored runs: every prompt, raw answer and result.", no_args_is_help=True)


@runs_app.command("list")
def runs_list(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(min=1)] = 20,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The most recent runs."""
    store = open_store(ctx)
    rows = store.list(limit)
    if as_json:
        stdout.print_json(data=rows)
        return
    table = Table("run id", "created (UTC)", "status", "pipeline", "image", "modification")
    for r in rows:
        table.add_row(
            r["id"], r["created_at"][:19], r["status"], r["pipeline"], escape(Path(r["image"] or "").name), escape(r["modification"] or "")
        )
    stdout.print(table)


@runs_app.command("show")
def runs_show(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="Run id (a unique prefix is enough).")],
    as_json: Annotated[bool, typer.Option("--json", help="Everything, as JSON (vectors included).")] = False,
    k: Annotated[int, typer.Option("-k", min=1, help="How many results to show.")] = 10,
    prices: Prices = None,
) -> None:
    """Every intermediate of a run: rendered prompts, raw answers, parsed outputs, models, timings, tokens."""
    from cirkit.costs import cost, describe, load_prices, token_totals

    price_table = load_prices(prices)
    run = open_store(ctx).get(run_id)
    totals = token_totals(run.steps)
    if as_json:
        data = run.to_dict(with_pipeline_text=True)
        if price_table:
            data["cost"] = cost(totals, price_table)
        stdout.print_json(data=data)
        return
    stdout.print(
        Panel(
            f"status: {run.status}   pipeline: {run.pipeline_name} ({run.pipeline_source})\n"
            f"created: {run.created_at}   index: {run.index_dir}\n"
            f"image: {escape(run.inputs['image'])}\nmodification: {escape(run.inputs['modification'])}"
            + (f"\nderived from run {run.parent_id}: {escape(json.dumps(run.change))}" if run.parent_id else "")
            + (f"\n[red]error: {escape(run.error)}[/red]" if run.error else ""),
            title=f"run {run.id}",
        )
    )
    for step in run.steps:
        lines = []
        if step.model:
            lines.append("model: " + ", ".join(f"{k}={v}" for k, v in step.model.items() if v is not None))
        lines.append("params: " + ", ".join(f"{k}={v}" for k, v in step.params.items()))
        for template in step.templates:
            lines.append(f"template: {template['name']} ({template['source']})")
        for i, prompt in enumerate(step.prompts):
            lines.append(f"[bold]sent[/bold]{f' #{i + 1}' if len(step.prompts) > 1 else ''}:\n{escape(_render_prompt(prompt))}")
        for i, raw in enumerate(step.raw):
            lines.append(f"[bold]raw answer[/bold]{f' #{i + 1}' if len(step.raw) > 1 else ''}:\n{escape(str(raw))}")
        for key, value in step.outputs.items():
            if key == "sources":
                continue
            if key == "descriptions" and len(value) > 1:
                sources = step.outputs.get("sources") or [{}] * len(value)
                for i, (text, source) in enumerate(zip(value, sources)):
                    origin = f" ({source['template']}, sample {source['sample']})" if source else ""
                    lines.append(f"[bold]description {i + 1}[/bold]{escape(origin)}: {escape(text)}")
                continue
            if key == "descriptions":
                continue
            if key == "verdicts":
                lines.extend(escape(_verdict_line(v)) for v in value)
                continue
            lines.append(f"[bold]{key}[/bold]: {escape(summarize(value))}")
        for note in step.notes:
            lines.append(f"[yellow]note: {escape(note)}[/yellow]")
        if step.error:
            lines.append(f"[red]error: {escape(step.error)}[/red]")
        origin = {"cache": " from cache", "copied": " copied from parent", "edited": " EDITED BY HAND"}.get(step.origin, "")
        in_round = f" round {step.round}" if step.round else ""
        title = f"{step.position + 1}. {step.name}{in_round} ({step.kind}) {step.status}{origin} {step.seconds:.2f}s"
        if step.tokens:
            title += f", {step.tokens['input']} + {step.tokens['output']} tokens"
        stdout.print(Panel("\n".join(lines), title=title, title_align="left"))
    if run.results:
        print_results(run.results[:k])
    if any(step.tokens for step in run.steps):
        stdout.print(describe(totals, cost(totals, price_table)))


def _render_prompt(prompt: Any) -> str:
    if isinstance(prompt, dict) and "messages" in prompt:  # with images: rerank's (reference and) candidate
        return f"(images: {', '.join(prompt.get('images', []))}) " + _render_prompt(prompt["messages"])
    if isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m for m in prompt):
        return "\n".join(f"[{m['role']}] {m['content']}" for m in prompt)
    return str(prompt)


def _verdict_line(v: dict[str, Any]) -> str:
    """One judged candidate: its answer, verifier score and where it came from, and its scores."""
    judged = f"P(yes) {v['verifier']:.3f} ({v['source']})" if v.get("verifier") is not None else v.get("source", "")
    scores = f", retrieval {v['retrieval_score']:.4f} -> {v['score']:.4f}" if "score" in v else ""
    lines = [f"#{v['rank']} {v['path']}: {v.get('answer')!r} {judged}{scores}"]
    for check in v.get("checks") or []:  # verify: one per proposition; compare: one per comparison
        what = check["proposition"] if "proposition" in check else f"vs {check['against']} (shown {check['shown']})"
        p_yes = f"P(yes) {check['p_yes']:.3f} ({check['source']})" if check.get("p_yes") is not None else check.get("source", "")
        lines.append(f"    {what}: {check.get('answer')!r} {p_yes}")
    return "\n".join(lines)






@runs_app.command("edit")
def runs_edit(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="The run to fix.")],
    step: Annotated[str, typer.Argument(help="The step whose text (or image) to replace (e.g. caption, rewrite, edit).")],
    text: Annotated[Optional[str], typer.Option("--text", help="The new text.")] = None,
    file: Annotated[Optional[Path], typer.Option("--file", help="Read the new text from a file; for a step that makes an image, the new image.")] = None,
    round_: Annotated[int, typer.Option("--round", min=0, help="For a step in a loop: the round to edit (0 is the first).")] = 0,
    no_cache: NoCache = False,
) -> None:
    """Replace a step's output by hand and re-run what follows, as a new run linked to the original."""
    from cirkit.components import COMPONENTS
    from cirkit.revise import Revision, revise

    store = open_store(ctx)
    run = store.get(run_id)
    component = COMPONENTS.get(run.step(step).kind)
    if file is not None and text is None and component is not None and component.editable_image:
        (new_id,) = revise(store, [Revision(run.id, step, round=round_, image=file)], use_cache=not no_cache, progress=True)
        _report_new_run(store, run.id, new_id)
        return
    if text is None and file is None:
        text = _edit_in_editor(run, step)
    elif file is not None:
        if text is not None:
            raise CirkitError("give --text or --file, not both")
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CirkitError(f"cannot read {file}: {one_line(exc)}") from None
    (new_id,) = revise(store, [Revision(run.id, step, text, round=round_)], use_cache=not no_cache, progress=True)
    _report_new_run(store, run.id, new_id)


@runs_app.command("rerun")
def runs_rerun(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="The run to re-run.")],
    from_step: Annotated[Optional[str], typer.Option("--from", help="Re-run this step and those after it (default: the first).")] = None,
    round_: Annotated[int, typer.Option("--round", min=0, help="For a step in a loop: the round to re-run from (0 is the first).")] = 0,
    prompt: PromptSwaps = None,
    pipeline: Annotated[Optional[str], typer.Option("--pipeline", "-p", help="Another pipeline file or built-in name (default: the text stored with the run).")] = None,
    no_cache: NoCache = False,
    model: ModelOverrides = None,
) -> None:
    """Re-run a run from a step (keeping what came before), as a new run linked to the original."""
    from cirkit.commands.common import parse_model_overrides
    from cirkit.revise import Revision, revise

    store = open_store(ctx)
    run = store.get(run_id)
    swaps = parse_prompt_swaps(prompt or [])
    (new_id,) = revise(
        store, [Revision(run.id, from_step, round=round_)], pipeline=pipeline, prompts=swaps, model_overrides=parse_model_overrides(model),
        use_cache=not no_cache, progress=True,
    )
    _report_new_run(store, run.id, new_id)


@runs_app.command("apply")
def runs_apply(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="JSONL or CSV rows: run_id (or query_id), step, text.")],
    partial: Annotated[bool, typer.Option("--partial", help="Apply the good rows even if some rows are bad.")] = False,
    no_cache: NoCache = False,
) -> None:
    """Apply many hand edits at once (e.g. fixed captions), re-running only what follows each, in one batch."""
    from cirkit.revise import read_overrides, revise

    store = open_store(ctx)
    revisions, problems = read_overrides(file, store, partial=partial)
    for problem in problems:
        stderr.print(f"[yellow]bad row:[/yellow] {escape(problem)}")
    if problems and not partial:
        raise CirkitError(f"{len(problems)} bad row(s) in {file}: nothing applied (fix them, or --partial to apply the good rows)")
    new_ids = revise(store, revisions, use_cache=not no_cache, progress=True)
    table = Table("original", "step", "new run", "status", "top result", title=f"{len(new_ids)} runs revised")
    for revision, new_id in zip(revisions, new_ids):
        new = store.get(new_id)
        top = new.results[0]["path"] if new.results else (new.error or "")
        table.add_row(revision.run_id, revision.step, new_id, new.status, escape(top))
    stdout.print(table)
    if problems:
        raise CirkitError(f"{len(problems)} bad row(s) skipped")


@runs_app.command("diff")
def runs_diff(
    ctx: typer.Context,
    a: Annotated[str, typer.Argument(help="A run id.")],
    b: Annotated[str, typer.Argument(help="Another run id (e.g. its edited re-run).")],
    k: Annotated[int, typer.Option("-k", min=1, help="Compare the top k of each.")] = 10,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """What changed between two runs: intermediates side by side, and how the ranks moved."""
    from cirkit.revise import diff_runs

    store = open_store(ctx)
    diff = diff_runs(store.get(a), store.get(b), k)
    if as_json:
        stdout.print_json(data=diff)
        return
    table = Table("step", f"run {diff['a']}", f"run {diff['b']}", title="Intermediates")
    for step in diff["steps"]:
        mark = "[bold yellow]*[/bold yellow] " if step["changed"] else ""
        origin = f" [dim]({step['origin_b']})[/dim]" if step["origin_b"] not in (None, "ran") else ""
        table.add_row(mark + step["step"] + origin, escape("\n".join(step["a"])), escape("\n".join(step["b"])))
    stdout.print(table)
    ranks = Table("image", f"rank in {diff['a']}", f"rank in {diff['b']}", "moved", title=f"Top {k} ranks")
    for move in diff["ranks"]:
        ra, rb = move["rank_a"], move["rank_b"]
        moved = "" if ra is None or rb is None else (f"up {ra - rb}" if rb < ra else f"down {rb - ra}" if rb > ra else "=")
        ranks.add_row(escape(move["path"]), str(ra or "-"), str(rb or "-"), moved)
    stdout.print(ranks)
    for target in diff["targets"]:
        stdout.print(f"target {escape(target['path'])}: rank {target['rank_a'] or 'not found'} -> {target['rank_b'] or 'not found'}")


@runs_app.command("export")
def runs_export(
    ctx: typer.Context,
    run_ids: Annotated[Optional[list[str]], typer.Argument(help="Runs to export (default: all).")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="The JSONL file to write.")] = Path("runs.jsonl"),
) -> None:
    """Write runs as JSON lines, with everything `runs show --json` has."""
    store = open_store(ctx)
    ids = [store.resolve_id(r) for r in run_ids] if run_ids else store.all_ids()
    if not out.parent.is_dir():
        raise CirkitError(f"cannot write {out}: folder {out.parent} does not exist")
    tmp = out.with_name(f".{out.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for run_id in ids:
            fh.write(json.dumps(store.get(run_id).to_dict(with_pipeline_text=True), ensure_ascii=False) + "\n")
    os.replace(tmp, out)
    stdout.print(f"exported {len(ids)} runs to {out}")


def _edit_in_editor(run, step_name: str) -> str:
    from cirkit.pipelines import load_pipeline

    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR")
    if not editor:
        raise CirkitError("give --text or --file (or set $EDITOR to edit in an editor)")
    current = ""
    try:
        step = load_pipeline(run.pipeline_source).step(step_name)
        current = str(run.step(step_name).outputs.get(step.component.editable or "", ""))
    except CirkitError:
        pass
    with tempfile.NamedTemporaryFile("w+", suffix=".txt", delete=False, encoding="utf-8") as fh:
        fh.write(current)
        path = fh.name
    try:
        if subprocess.call([*shlex.split(editor), path]) != 0:
            raise CirkitError(f"the editor ({editor}) failed: nothing changed")
        return Path(path).read_text(encoding="utf-8")
    finally:
        os.unlink(path)


def _report_new_run(store, old_id: str, new_id: str) -> None:
    new = store.get(new_id)
    if new.change and new.change.get("note"):
        stderr.print(f"[yellow]note:[/yellow] {escape(new.change['note'])}")
    ran = [s.name for s in new.steps if s.origin == "ran"]
    reused = [f"{s.name} ({s.origin})" for s in new.steps if s.origin != "ran"]
    stdout.print(f"new run {new_id} from {old_id}: ran {', '.join(ran) or 'nothing'}; reused {', '.join(reused) or 'nothing'}")
    if new.error:
        raise CirkitError(f"run {new_id}: {new.error}")
    print_results((new.results or [])[:10])
    stdout.print(f"compare with: cirkit runs diff {old_id} {new_id}")


@runs_app.command("failures")
def runs_failures(
    ctx: typer.Context,
    experiment: Annotated[str, typer.Argument(help="An experiment id (from `cirkit eval`).")],
    k: Annotated[int, typer.Option("--k", "-k", min=1, help="A failure: the target is not in the top k.")] = 10,
    limit: Annotated[Optional[int], typer.Option("--limit", min=1)] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The queries of an experiment whose target is not in the top k, ready to fix with `runs edit`."""
    from cirkit.experiments import failures

    rows = failures(open_store(ctx), experiment, k, limit)
    if as_json:
        print(json.dumps(rows, ensure_ascii=False))
        return
    table = Table("query", "run id", "target rank", "modification", "caption", "rewrite", title=f"{len(rows)} failures (top {k})")
    for row in rows:
        table.add_row(
            escape(str(row["query_id"])), row["run_id"], str(row["target_rank"] or "-"), escape(row["modification"] or ""),
            escape(row.get("caption", "")), escape(" | ".join(row.get("descriptions", [])) or (row["error"] or "")),
        )
    stdout.print(table)
