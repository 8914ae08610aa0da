"""edit_image: an image-editing model (diffusers) changes the reference image as the text says.

The text is the modification by default; wire `text` to a description to edit by that instead. With
`suggestion` wired (a critic's advice in a refine loop) the text is amended by it, as `amend` says.
The edited image is kept as a PNG file in the data directory (content-addressed) and shown by path
in `cirkit runs show`, and may be replaced by hand (`cirkit runs edit RUN STEP --file new.png`); an
`embed_image` step embeds it for image-to-image search. The same
inputs, model and parameters give the same image (the seed is a parameter), so it is cached like
any step output.
"""

from __future__ import annotations

from typing import Any

from pydantic import field_validator

from cirkit.components.base import Component, ItemResult, amended, check_amend_form
from cirkit.components.values import Port
from cirkit.engines.diffusers_engine import EditParams


class EditImageParams(EditParams):
    amend: str = "{modification} and {suggestion}."  # how a wired suggestion joins the text

    _amend = field_validator("amend")(check_amend_form)


class EditImage(Component):
    kind = "edit_image"
    description = "Edit the reference image as the text says with an image-editing model (diffusers), for image-to-image search."
    inputs = {"image": Port("image", "image"), "text": Port("text", "modification"), "suggestion": Port("text", optional=True)}
    outputs = {"edited_image": "image"}
    editable_image = "edited_image"
    model_types = ("image_editor",)
    Params = EditImageParams

    def run(self, items: list[dict[str, Any]]) -> list[ItemResult]:
        texts = [amended(item["text"], item.get("suggestion"), self.params.amend) for item in items]
        edited = self.model.edit([item["image"] for item in items], texts, self.params)
        return [
            ItemResult(outputs={"edited_image": image}, prompts=[{"images": ["reference"], "prompt": text}], notes=[f"edited to {image.width}x{image.height}"])
            for text, image in zip(texts, edited)
        ]
