"""Transform: pure enrichment of changes with the content cache (no I/O; reading is `pulse.source`'s)."""

from pulse.transform.content_cache import ContentCache, ContentInfo
from pulse.transform.enrich import engagement, enrich_change, enrich_row, round_half_away

__all__ = ["ContentCache", "ContentInfo", "engagement", "enrich_change", "enrich_row", "round_half_away"]
