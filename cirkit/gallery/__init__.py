"""The gallery side: the index of CLIP image vectors (`index`), its FAISS types (`ann`), captions
of the gallery images kept beside it (`captions`) and embedding on a Ray cluster (`ray_embed`)."""

from cirkit.gallery.index import BuildReport, GalleryIndex, build_index

__all__ = ["BuildReport", "GalleryIndex", "build_index"]
