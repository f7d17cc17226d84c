"""convert/suggestions.py: 'did you mean' over real lists, separators and case folded."""

import open_clip

from vit_lens_clip.convert.suggestions import did_you_mean, nearest


def test_slash_and_case_find_the_open_clip_name():
    models = open_clip.list_models()
    assert nearest("ViT-B/16", models) == ["ViT-B-16"]
    assert nearest("vit_b_16", models) == ["ViT-B-16"]


def test_near_misses_best_first_and_nothing_for_far_names():
    got = nearest("ViT-B-61", ["ViT-B-16", "ViT-L-14", "RN50"])
    assert got and got[0] == "ViT-B-16" and "RN50" not in got
    assert nearest("zzzzzz", ["ViT-B-16", "RN50"]) == []
    assert len(nearest("a", [f"a{i}" for i in range(10)], n=2, cutoff=0.1)) <= 2


def test_did_you_mean_text():
    assert did_you_mean([]) == ""
    assert did_you_mean(["a"]) == " (did you mean 'a'?)"
    assert did_you_mean(["a", "b"]) == " (did you mean 'a' or 'b'?)"
