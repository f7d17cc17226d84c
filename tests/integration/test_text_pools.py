"""Every built-in text pool is clean by a maintained profanity list (better_profanity), so that no report shows a
vulgar word as a head's or a neuron's description."""

import pytest
from better_profanity import profanity

from vit_lens_clip.methods.textspan.pools import BUILTIN_POOLS, load_pool


@pytest.mark.parametrize("name", sorted(BUILTIN_POOLS))
def test_no_pool_text_matches_the_profanity_list(name):
    texts = load_pool(name)
    assert len(texts) > 1000
    assert [t for t in texts if profanity.contains_profanity(t)] == []
