"""One module per stage kind; COMPONENTS maps a pipeline step's `kind` to its class."""

from cirkit.components.base import Component, ItemResult
from cirkit.components.caption import Caption
from cirkit.components.embed import Embed
from cirkit.components.rewrite import Rewrite
from cirkit.components.search import Search

# The values a query brings: the reference image (loaded, RGB) and the modification text.
QUERY_INPUTS = ("image", "modification")

COMPONENTS: dict[str, type[Component]] = {c.kind: c for c in (Caption, Rewrite, Embed, Search)}

__all__ = ["COMPONENTS", "QUERY_INPUTS", "Component", "ItemResult"]
