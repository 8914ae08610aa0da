"""One module per stage kind; COMPONENTS maps a pipeline step's `kind` to its class."""

from cirkit.components.base import Component, ItemResult
from cirkit.components.caption import Caption
from cirkit.components.edit_image import EditImage
from cirkit.components.embed import Embed, EmbedImage
from cirkit.components.ensemble import Ensemble
from cirkit.components.feedback import Feedback
from cirkit.components.compare import Compare
from cirkit.components.fuse import Fuse, Pdv
from cirkit.components.grid import GridRerank
from cirkit.components.merge import Merge
from cirkit.components.paraphrase import Paraphrase
from cirkit.components.propositions import Propositions
from cirkit.components.rerank import Rerank
from cirkit.components.reason import Reason
from cirkit.components.rewrite import Rewrite
from cirkit.components.verify import Verify
from cirkit.components.search import Search
from cirkit.components.values import QUERY_VALUES, VALUE_TYPES, Port

COMPONENTS: dict[str, type[Component]] = {
    c.kind: c for c in (Caption, Rewrite, Reason, Embed, EmbedImage, Fuse, Pdv, Ensemble, Search, Feedback, Rerank, Propositions, Verify, Compare, EditImage, Merge, GridRerank, Paraphrase)
}

__all__ = ["COMPONENTS", "QUERY_VALUES", "VALUE_TYPES", "Component", "ItemResult", "Port"]
