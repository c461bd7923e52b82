"""Transform: pure enrichment of changes with the content cache (no I/O)."""

from pulse.transform.content_cache import ContentCache, ContentInfo, load_content
from pulse.transform.enrich import engagement, enrich_change, enrich_row, round_half_away

__all__ = ["ContentCache", "ContentInfo", "engagement", "enrich_change", "enrich_row", "load_content", "round_half_away"]
