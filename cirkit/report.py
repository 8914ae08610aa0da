"""Runs as a self-contained HTML page: reference image, modification, every intermediate, ranked images.
An experiment's page shows its failures (or all its queries); a comparison page shows the queries
that got better or worse, the two runs side by side.

Images are embedded as JPEG thumbnails (data URIs), so the file can be mailed or archived alone.
Every text from models or users is escaped: captions and LLM outputs are untrusted.
"""

from __future__ import annotations

import base64
import io
import os
from html import escape
from urllib.parse import quote
from pathlib import Path
from typing import Any, Iterator

from cirkit.errors import CirkitError, ImageError, one_line
from cirkit.images import load_image
from cirkit.pipelines.stored_images import is_image_ref
from cirkit.store import RunRecord, StepRecord

STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;background:#fafafa}
section.run{background:#fff;border:1px solid #ddd;border-radius:8px;padding:16px;margin-bottom:24px}
h2{margin:0 0 8px 0;font-size:18px} .meta{color:#666;font-size:13px}
.query{display:flex;gap:16px;align-items:flex-start;margin:12px 0}
.query img{border:1px solid #ccc}
.step{border-left:3px solid #88a;padding:4px 12px;margin:8px 0}
.step.failed{border-color:#c33} .step.edited{border-color:#e90} .step.skipped{opacity:.6}
.text{white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:13px;background:#f4f4f8;padding:6px;border-radius:4px}
.note{color:#a60;font-size:13px} .error{color:#c33;font-weight:bold}
.results{display:flex;flex-wrap:wrap;gap:10px}
figure{margin:0;width:THUMBpx;font-size:12px;text-align:center;border:3px solid transparent;padding:2px}
figure.target{border-color:#2a2}
figure img{max-width:THUMBpx;max-height:THUMBpx}
figcaption{word-break:break-all} .badge{background:#2a2;color:#fff;border-radius:3px;padding:0 4px}
table.metrics{border-collapse:collapse;margin:8px 0 16px 0} table.metrics td,table.metrics th{border:1px solid #ddd;padding:2px 8px;text-align:right}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:12px;margin-bottom:24px} .pair section.run{margin:0;min-width:0}
nav.pages{margin:12px 0;font-size:14px} nav.pages a,nav.pages span{margin:0 3px} nav.pages .current{font-weight:bold}
.rankchange{font-weight:bold} .capped{background:#fff4d6;border:1px solid #e90;padding:6px 10px;border-radius:4px}
"""


def write_report(runs: list[RunRecord], out: str | Path, *, k: int = 10, thumb: int = 160) -> Path:
    """Write the runs as one HTML page to `out` (atomically)."""
    check_out(out)
    return write_html(render_report(runs, k=k, thumb=thumb), out)


def check_out(out: str | Path) -> Path:
    """`out`, refused before any work when its folder does not exist."""
    out = Path(out)
    if not out.parent.is_dir():
        raise CirkitError(f"cannot write {out}: folder {out.parent} does not exist")
    return out


def write_html(html: str, out: str | Path) -> Path:
    out = check_out(out)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        tmp.write_text(html, encoding="utf-8")
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CirkitError(f"cannot write {out}: {one_line(exc)}") from None
    return out


def render_report(runs: list[RunRecord], *, k: int = 10, thumb: int = 160) -> str:
    sections = "\n".join(_run(run, k, thumb) for run in runs)
    title = f"cirkit report: {len(runs)} run{'s' if len(runs) != 1 else ''}"
    return _page(title, sections, thumb)


def _page(title: str, body: str, thumb: int) -> str:
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{escape(title)}</title>"
        f"<style>{STYLE.replace('THUMB', str(thumb))}</style></head>\n<body>\n<h1>{escape(title)}</h1>\n{body}\n</body></html>\n"
    )


def render_experiment(store: Any, exp_id: str, *, all_queries: bool = False, limit: int = 100, k: int = 10, thumb: int = 160) -> str:
    """An experiment's failures (target not in the top k), or all its queries, at most `limit` of them, on one page."""
    return next(render_experiment_pages(store, exp_id, ["report.html"], all_queries=all_queries, limit=limit, page_size=limit, k=k, thumb=thumb))


def experiment_page_count(store: Any, exp_id: str, *, all_queries: bool = False, limit: int | None = None, page_size: int = 100,
                          k: int = 10) -> int:
    shown = len(_experiment_rows(store.experiment(exp_id), all_queries, k)[:limit])
    return max(1, -(-shown // page_size))


def page_paths(out: str | Path, count: int) -> list[Path]:
    """The files of a report of `count` pages: OUT, then OUT-2, OUT-3, ... beside it."""
    out = Path(out)
    return [out] + [out.with_name(f"{out.stem}-{n}{out.suffix}") for n in range(2, count + 1)]


def render_experiment_pages(store: Any, exp_id: str, names: list[str], *, all_queries: bool = False, limit: int | None = None,
                            page_size: int = 100, k: int = 10, thumb: int = 160) -> Iterator[str]:
    """An experiment's failures (target not in the top k), or all its queries (at most `limit`), as
    pages of `page_size` queries, one at a time, each self-contained, linked by `names` (their file
    names, one per page: see experiment_page_count): previous, next, and an index of every page."""
    exp = store.experiment(exp_id)
    rows = _experiment_rows(exp, all_queries, k)
    what = f"all {len(rows)} queries" if all_queries else f"{len(rows)} of {len(exp['runs'])} queries failed (target not in the top {k})"
    shown = rows[:limit]
    chunks = [shown[at : at + page_size] for at in range(0, len(shown), page_size)] or [[]]
    if len(chunks) != len(names):
        raise ValueError(f"{len(chunks)} pages, {len(names)} names")
    for number, chunk in enumerate(chunks):
        first = number * page_size
        nav = _page_nav(names, number, first, len(chunk), len(shown)) if len(chunks) > 1 else ""
        parts = [_experiment_meta(exp), _metrics_table([exp["metrics"]], ["value"]), f"<h2 class='summary'>{escape(what)}</h2>"]
        parts.append(_capped(len(rows), limit, "--limit N shows more") if limit is not None else "")
        parts.append(nav)
        for row in chunk:
            head = f"query {escape(str(row['query_id']))} &middot; target rank <span class='rankchange'>{_rank(row['target_rank'])}</span>"
            parts.append(_run(store.get(row["run_id"]), k, thumb, head=head))
        parts.append(nav)
        title = f"cirkit report: experiment {exp['id']}" + (f" (page {number + 1} of {len(chunks)})" if len(chunks) > 1 else "")
        yield _page(title, "\n".join(parts), thumb)


def _experiment_rows(exp: dict[str, Any], all_queries: bool, k: int) -> list[dict[str, Any]]:
    return exp["runs"] if all_queries else [r for r in exp["runs"] if r["target_rank"] is None or r["target_rank"] > k]


def _page_nav(names: list[str], number: int, first: int, count: int, total: int) -> str:
    """Links to the previous and next pages and to every page, and which queries this page holds."""
    def link(n: int, text: str, rel: str = "") -> str:
        return f"<a href='{escape(quote(names[n]))}'{f' rel={rel}' if rel else ''}>{text}</a>"

    parts = [link(number - 1, "&larr; previous", "prev") if number > 0 else ""]
    parts += [f"<span class='current'>{n + 1}</span>" if n == number else link(n, str(n + 1)) for n in range(len(names))]
    parts.append(link(number + 1, "next &rarr;", "next") if number + 1 < len(names) else "")
    return (f"<nav class='pages'>queries {first + 1}&ndash;{first + count} of {total} &middot; page "
            + " ".join(p for p in parts if p) + "</nav>")


def render_comparison(store: Any, a: str, b: str, *, limit: int = 100, k: int = 10, thumb: int = 160) -> str:
    """Two experiments: their metrics, then each query whose target rank got better or worse, the
    run of A beside the run of B; at most `limit` queries of each kind."""
    from cirkit.experiments import compare

    diff = compare(store, a, b)
    ea, eb = store.experiment(diff["a"]), store.experiment(diff["b"])
    parts = [
        "<div class='pair'>", _experiment_meta(ea, "A"), _experiment_meta(eb, "B"), "</div>",
        _metrics_table([{m["metric"]: m["a"] for m in diff["metrics"]}, {m["metric"]: m["b"] for m in diff["metrics"]}], ["A", "B"]),
    ]
    for kind in ("better", "worse"):
        rows = diff[kind]
        parts.append(f"<h2 class='{kind}' data-count='{len(rows)}'>{len(rows)} quer{'y' if len(rows) == 1 else 'ies'} got {kind} in B</h2>")
        parts.append(_capped(len(rows), limit, "--limit N shows more"))
        for row in rows[:limit]:
            head = (f"query {escape(str(row['query_id']))} &middot; target rank <span class='rankchange'>"
                    f"{_rank(row['rank_a'])} &rarr; {_rank(row['rank_b'])}</span>")
            parts.append(f"<div class='pair {kind}' data-query='{escape(str(row['query_id']))}'>")
            parts.append(_run(store.get(row["run_a"]), k, thumb, head=f"A &middot; {head}"))
            parts.append(_run(store.get(row["run_b"]), k, thumb, head=f"B &middot; {head}"))
            parts.append("</div>")
    return _page(f"cirkit report: experiment {diff['a']} vs {diff['b']}", "\n".join(parts), thumb)


def _experiment_meta(exp: dict[str, Any], label: str = "") -> str:
    setting = f" &middot; setting {escape(', '.join(f'{k}={v}' for k, v in exp['setting'].items()))}" if exp.get("setting") else ""
    return (f"<div class='meta experiment' data-experiment='{escape(exp['id'])}'>{escape(label)} experiment {escape(exp['id'])} &middot; "
            f"{escape(str(exp['benchmark']))} {escape(str(exp['split']))} &middot; pipeline {escape(str(exp['pipeline_name']))}"
            f"{setting} &middot; {escape(str(exp['created_at']))}</div>")


def _metrics_table(columns: list[dict[str, Any]], labels: list[str]) -> str:
    keys = [key for key in dict.fromkeys(key for column in columns for key in column)]
    head = "".join(f"<th>{escape(label)}</th>" for label in labels)
    rows = "".join(
        f"<tr><th>{escape(str(key))}</th>" + "".join(f"<td>{escape(_value(column.get(key)))}</td>" for column in columns) + "</tr>"
        for key in keys
    )
    return f"<table class='metrics'><tr><th>metric</th>{head}</tr>{rows}</table>"


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return "-" if value is None else str(value)


def _rank(rank: int | None) -> str:
    return str(rank) if rank is not None else "not found"


def _capped(total: int, limit: int, how: str) -> str:
    if total <= limit:
        return ""
    return f"<p class='capped'>showing the first {limit} of {total} ({escape(how)})</p>"


def _run(run: RunRecord, k: int, thumb: int, head: str = "") -> str:
    """One run; `head` is trusted markup (callers escape what goes into it)."""
    targets = set(run.inputs.get("targets") or [])
    parent = f" &middot; derived from run {escape(run.parent_id)}" if run.parent_id else ""
    parts = [
        f"<section class='run' id='run-{escape(run.id)}' data-run='{escape(run.id)}'>",
        f"<h2>run {escape(run.id)} <span class='meta'>{escape(run.status)}</span></h2>",
        f"<div class='meta head'>{head}</div>" if head else "",
        f"<div class='meta'>pipeline {escape(run.pipeline_name)} &middot; {escape(run.created_at)}{parent}</div>",
        "<div class='query'>",
        _image(run.inputs.get("image"), thumb, "reference"),
        f"<div><div class='meta'>reference: {escape(str(run.inputs.get('image')))}</div>"
        f"<p class='modification'><b>modification:</b> {escape(run.inputs.get('modification', ''))}</p></div>",
        "</div>",
    ]
    if run.error:
        parts.append(f"<p class='error'>{escape(run.error)}</p>")
    parts.extend(_step(step, thumb) for step in run.steps)
    if run.results:
        root = Path(run.results[0]["file"]).parent
        verdicts = {v["path"]: v for step in run.steps for v in step.outputs.get("verdicts") or [] if v}
        parts.append(f"<h3>top {min(k, len(run.results))} results</h3><div class='results'>")
        for hit in run.results[:k]:
            is_target = hit["path"] in targets
            badge = " <span class='badge'>target</span>" if is_target else ""
            judged = verdicts.get(hit["path"])
            verifier = f" data-verifier='{judged['verifier']}'" if judged and judged.get("verifier") is not None else ""
            judge = f"<br>judge: {escape(str(judged.get('answer')))} ({escape(judged.get('source', ''))})" if judged else ""
            checks = [c for step in run.steps for v in step.outputs.get("verdicts") or [] if v and v["path"] == hit["path"] for c in v.get("checks") or []]
            judge += "".join(f"<br><span class='check'>{escape(_check_text(c))}</span>" for c in checks)
            parts.append(
                f"<figure class='{'target' if is_target else 'hit'}' data-rank='{hit['rank']}'{verifier}>"
                f"{_image(hit.get('file') or str(root / hit['path']), thumb, hit['path'])}"
                f"<figcaption>#{hit['rank']} &middot; {hit['score']:.4f}{badge}<br>{escape(hit['path'])}{judge}</figcaption></figure>"
            )
        parts.append("</div>")
        missing = targets - {hit["path"] for hit in run.results[:k]}
        if missing:
            parts.append(f"<p class='note'>target not in the top {k}: {escape(', '.join(sorted(missing)))}</p>")
    parts.append("</section>")
    return "\n".join(parts)


def _step(step: StepRecord, thumb: int = 160) -> str:
    css = "failed" if step.status == "failed" else "edited" if step.origin == "edited" else "skipped" if step.status == "skipped" else ""
    origin = "" if step.origin == "ran" else f" &middot; {escape(step.origin)}"
    model = f" &middot; {escape(str(step.model.get('model') or step.model.get('name')))}" if step.model else ""
    round_ = f" &middot; round {step.round}" if step.round else ""
    status = " &middot; skipped" if step.status == "skipped" else ""
    parts = [f"<div class='step {css}' data-step='{escape(step.name)}' data-round='{step.round}'><b>{escape(step.name)}</b>"
             f" ({escape(step.kind)}){model}{round_}{status}{origin}"]
    out = step.outputs
    for name, value in out.items():  # images a step made (an edited reference image, a grid of candidates)
        if is_image_ref(value):
            parts.append(f"<figure class='made' data-output='{escape(name)}'>{_image(value['image_file'], thumb, name)}"
                         f"<figcaption>{escape(name)}</figcaption></figure>")
    texts: list[tuple[str, str]] = []
    if "caption" in out:
        texts.append(("caption", out["caption"]))
    if "descriptions" in out:
        sources = out.get("sources") or [{}] * len(out["descriptions"])
        for i, (text, src) in enumerate(zip(out["descriptions"], sources)):
            label = f"rewrite {i + 1}" + (f" ({src.get('template')}, sample {src.get('sample')})" if src else "")
            texts.append((label, text))
    texts.extend((f"proposition {i + 1}", text) for i, text in enumerate(out.get("propositions") or []))
    if step.kind == "paraphrase":
        texts.extend((f"paraphrase {i + 1}", text) for i, text in enumerate(out.get("texts") or []))
    for label, text in texts:
        parts.append(f"<div class='meta'>{escape(label)}</div><div class='text output'>{escape(str(text))}</div>")
    if step.prompts and step.kind != "embed":
        rendered = "\n\n".join(_prompt_text(p) for p in step.prompts)
        raw = "\n\n".join(str(r) for r in step.raw)
        parts.append(
            f"<details><summary>prompts sent and raw answers</summary>"
            f"<div class='text prompt'>{escape(rendered)}</div><div class='text raw'>{escape(raw)}</div></details>"
        )
    parts.extend(f"<div class='note'>{escape(note)}</div>" for note in step.notes)
    if step.error:
        parts.append(f"<div class='error'>{escape(step.error)}</div>")
    parts.append("</div>")
    return "\n".join(parts)


def _check_text(check: dict[str, Any]) -> str:
    """One proposition checked on a candidate, or one pairwise comparison: its answer and P(yes)."""
    what = check["proposition"] if "proposition" in check else f"vs {check['against']} ({check['shown']})"
    p_yes = f" {check['p_yes']:.2f}" if check.get("p_yes") is not None else ""
    return f"{what}: {check.get('answer')}{p_yes}"


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, dict) and "messages" in prompt:
        return f"(images: {', '.join(prompt.get('images', []))})\n" + _prompt_text(prompt["messages"])
    if isinstance(prompt, list):
        return "\n".join(f"[{m.get('role')}] {m.get('content')}" if isinstance(m, dict) else str(m) for m in prompt)
    return str(prompt)


def _image(path: str | None, size: int, alt: str) -> str:
    try:
        image = load_image(path) if path else None
    except ImageError:
        image = None
    if image is None:
        return f"<div class='missing' style='width:{size}px'>image missing: {escape(str(path))}</div>"
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    data = base64.b64encode(buffer.getvalue()).decode()
    return f"<img src='data:image/jpeg;base64,{data}' alt='{escape(alt)}'>"
