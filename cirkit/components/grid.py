"""grid_rerank: the top K candidates tiled into one numbered grid image, judged in one MLLM call.

Each candidate is fitted into a square cell (white padding) with its number (1..K, the retrieval
order) in the cell's top-left corner; cells run left to right, top to bottom, in `columns` columns
(default: the smallest square that holds K). The model sees the reference image (unless
`show_reference: false`) and the grid, and the template asks for the cell numbers from best to
worst match. The answer is read as the numbers in it, in order, keeping each cell 1..K once; the
cells it names come first in that order, the rest follow in retrieval order, and the top K take the
scores of the places they land on. An answer that names no cell keeps the retrieval order and the
notes say so (or fails the query: `fallback: error`). The grid image is kept with the run.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from PIL import Image, ImageDraw, ImageOps
from pydantic import Field

from cirkit.components.base import Component, ItemResult, generate_keeping_answers
from cirkit.components.values import Port
from cirkit.engines.base import GenerationParams, GenerationRequest
from cirkit.errors import ImageError
from cirkit.images import load_image

_NUMBER = re.compile(r"(?<![\d.])(\d{1,3})(?![\d.]\d)")


class GridParams(GenerationParams):
    k: int = Field(9, ge=2, le=36)  # candidates in the grid
    columns: int | None = Field(None, ge=1, le=36)
    cell: int = Field(224, ge=32, le=1024)  # pixels per cell side
    show_reference: bool = True
    max_new_tokens: int = Field(64, ge=1, le=32768)
    n: int = Field(1, ge=1, le=1)
    fallback: Literal["keep", "error"] = "keep"


class GridRerank(Component):
    kind = "grid_rerank"
    description = "Tile the top-K candidates into one numbered grid image; one MLLM call ranks the cells."
    inputs = {
        "image": Port("image", "image"),
        "modification": Port("text", "modification"),
        "description": Port("text", "description"),
        "results": Port("results", "results"),
    }
    outputs = {"results": "results", "verdicts": "verdicts", "grid": "image"}
    model_types = ("vlm",)
    prompt_variables = ("modification", "description", "count")
    Params = GridParams

    def run(self, items: list[dict[str, Any]]) -> list[ItemResult]:
        results, requests, asked = [], [], []
        for i, item in enumerate(items):
            top = item["results"][: self.params.k]
            messages = self.prompts[0].render(modification=item["modification"], description=item["description"], count=str(len(top)))
            shown = (["reference"] if self.params.show_reference else []) + [f"grid of {len(top)}"]
            result = ItemResult(prompts=[{"images": shown, "messages": messages}])
            results.append(result)
            try:
                grid = numbered_grid([load_image(hit["file"]) for hit in top], self.params.cell, self.params.columns)
            except ImageError as exc:
                result.error = f"cannot make the grid: candidate image: {exc}"
                continue
            result.outputs["grid"] = grid
            images = (item["image"], [grid]) if self.params.show_reference else (grid, [])
            requests.append(GenerationRequest(messages=messages, image=images[0], more_images=images[1]))
            asked.append(i)
        generations, failure = generate_keeping_answers(self.model, requests, self.params) if requests else ([], None)
        for i, answer in zip(asked, generations):
            result, top = results[i], items[i]["results"][: self.params.k]
            if answer is None:
                result.error = f"no answer: {failure}"
                continue
            text = answer[0].text
            result.raw.append(text)
            order = parse_cells(text, len(top))
            if not order:
                problem = f"the answer {text[:80]!r} names no cell 1..{len(top)}"
                if self.params.fallback == "error":
                    result.error = problem
                    continue
                result.notes.append(f"{problem}: kept the retrieval order")
            placed = order + [c for c in range(len(top)) if c not in order]
            reordered = [{**top[c], "rank": r + 1, "score": top[r]["score"], "retrieval_score": top[c]["score"]} for r, c in enumerate(placed)]
            verdicts = [
                {"rank": hit["rank"], "path": hit["path"], "cell": c + 1, "answer": f"named {order.index(c) + 1}" if c in order else "not named",
                 "verifier": None, "source": "grid", "note": None, "retrieval_score": hit["score"], "score": top[placed.index(c)]["score"]}
                for c, hit in enumerate(top)
            ]
            result.outputs.update(results=reordered + items[i]["results"][len(top) :], verdicts=verdicts)
        return results


def parse_cells(text: str, count: int) -> list[int]:
    """The cells (0-based) an answer names, in order: each number 1..count once."""
    cells: list[int] = []
    for match in _NUMBER.finditer(text):
        cell = int(match.group(1)) - 1
        if 0 <= cell < count and cell not in cells:
            cells.append(cell)
    return cells


def numbered_grid(images: list[Image.Image], cell: int, columns: int | None = None) -> Image.Image:
    """The images fitted into square cells, numbered 1.. in their top-left corners."""
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    grid = Image.new("RGB", (columns * cell, rows * cell), "white")
    draw = ImageDraw.Draw(grid)
    size = max(12, cell // 8)
    for n, image in enumerate(images):
        x, y = (n % columns) * cell, (n // columns) * cell
        fitted = ImageOps.pad(image, (cell - 4, cell - 4), color="white")
        grid.paste(fitted, (x + 2, y + 2))
        label = str(n + 1)
        box = draw.textbbox((0, 0), label, font_size=size)
        draw.rectangle((x + 2, y + 2, x + 8 + box[2], y + 8 + box[3]), fill="black")
        draw.text((x + 5, y + 3), label, fill="white", font_size=size)
    return grid
