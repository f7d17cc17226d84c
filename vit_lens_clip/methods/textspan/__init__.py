"""TextSpan: describe each attention head by the texts that span its output (Gandelsman et al., ICLR 2024)."""

from vit_lens_clip.methods.textspan.algorithm import TextSpanResult, text_span
from vit_lens_clip.methods.textspan.pools import embed_texts_cached, load_pool
from vit_lens_clip.methods.textspan.ranking import rank_heads_by_text

__all__ = ["TextSpanResult", "embed_texts_cached", "load_pool", "rank_heads_by_text", "text_span"]
