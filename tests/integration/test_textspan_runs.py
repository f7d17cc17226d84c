"""TextSpan runs on tiny random models: collection, batched TextSpan rows, completeness, head pickers,
and the spurious-cue experiment end to end."""

from __future__ import annotations

import dataclasses
import json

import open_clip
import pytest
import torch
import torch.nn.functional as F
from conftest import rel_err, tiny_clip

from vit_lens_clip import HookedViT, LoadedCLIP
from vit_lens_clip.datasets import shapes_world
from vit_lens_clip.datasets.folder import TensorImages
from vit_lens_clip.datasets.shapes_adapters import (
    SHAPES_PLACE_QUERIES,
    shapes_bird_classes,
    shapes_eval_set,
    shapes_group_names,
)
from vit_lens_clip.decompose.contributions import HeadContributions
from vit_lens_clip.decompose.parts import decompose
from vit_lens_clip.errors import BadInputError
from vit_lens_clip.methods.ablation import ablate_posthoc
from vit_lens_clip.methods.spurious import (
    LabelGroupItems,
    SpuriousConfig,
    dataset_cue_and_class_effects,
    group_accuracy,
    random_heads,
    run_spurious,
    spurious_table,
)
from vit_lens_clip.methods.textspan.algorithm import text_span
from vit_lens_clip.methods.textspan.runs import (
    TextSpanTable,
    collect_head_contributions,
    completeness,
    completeness_figure,
    heads_by_textspan_topic,
    heads_for_queries,
    run_textspan,
)
from vit_lens_clip.methods.zeroshot import accuracy, logits

torch.set_num_threads(1)
TOL = 1e-5
N_IMAGES = 12
LAST = 2  # kept layers of the 3-layer tiny model


def tiny_loaded(seed: int = 0) -> LoadedCLIP:
    clip = tiny_clip(seed)
    hooked = HookedViT.from_open_clip(clip)
    tokenizer = lambda texts: open_clip.tokenize(list(texts), context_length=16)
    preprocess = open_clip.image_transform(32, is_train=False)
    return LoadedCLIP(hooked, clip, tokenizer, preprocess, "tiny", None, key=f"tiny|{seed}")


def unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)


@pytest.fixture(scope="module")
def tiny():
    loaded = tiny_loaded()
    images = torch.randn(N_IMAGES, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    labels = torch.arange(N_IMAGES) % 5
    contributions = collect_head_contributions(
        loaded, TensorImages(images, labels.tolist()), last_n_layers=LAST, batch_size=5, progress=False
    )
    return loaded, images, labels, contributions


# ------------------------------------------------------------------ collection


class _KillOnce(torch.utils.data.Dataset):
    """Serves a dataset but raises KeyboardInterrupt the first time item ``at`` is asked for."""

    def __init__(self, dataset, at: int):
        self.dataset, self.at, self.killed, self.served = dataset, at, False, 0

    def __len__(self):
        return len(self.dataset)

    def identity(self):  # the same data as the wrapped set (run folders record it)
        return self.dataset.identity()

    def __getitem__(self, i):
        if i == self.at and not self.killed:
            self.killed = True
            raise KeyboardInterrupt("simulated kill")
        self.served += 1
        return self.dataset[i]


def test_collected_heads_equal_decompose(tiny, tmp_path):
    loaded, images, labels, contributions = tiny
    parts = decompose(loaded.model, images, layers=[1, 2], normalize=True)
    assert contributions.layers == [1, 2] and contributions.heads.shape == (N_IMAGES, 2, 4, 48)
    assert rel_err(contributions.heads, parts.heads) <= TOL
    assert rel_err(contributions.embed, parts.embed) <= TOL
    assert rel_err(contributions.embedding, parts.embedding) <= TOL
    assert torch.equal(contributions.labels, labels)
    assert rel_err(contributions.means["heads"], parts.heads.mean(0)) <= TOL
    # streamed to disk: the same numbers; a second call re-reads the finished run
    on_disk = collect_head_contributions(loaded, TensorImages(images, labels.tolist()), last_n_layers=LAST,
                                         batch_size=5, out_dir=tmp_path / "run", progress=False, shard_size=4)
    again = collect_head_contributions(loaded, TensorImages(images, labels.tolist()), last_n_layers=LAST,
                                       batch_size=5, out_dir=tmp_path / "run", progress=False, shard_size=4)
    for other in (on_disk, again):
        assert rel_err(other.heads, parts.heads) <= TOL and rel_err(other.embed, parts.embed) <= TOL
        assert torch.equal(other.labels, labels) and torch.equal(other.indices, torch.arange(N_IMAGES))
        assert rel_err(other.means["mlps"], parts.mlps.mean(0)) <= TOL
    # a run killed mid-way resumes from its checkpoint and gives the same numbers
    killer = _KillOnce(TensorImages(images, labels.tolist()), at=7)
    kw = {"last_n_layers": LAST, "batch_size": 2, "out_dir": tmp_path / "killed", "progress": False, "shard_size": 3,
              "checkpoint_every": 1}
    with pytest.raises(KeyboardInterrupt):
        collect_head_contributions(loaded, killer, **kw)
    resumed = collect_head_contributions(loaded, killer, **kw)
    assert killer.served < 2 * N_IMAGES  # the images before the checkpoint were not run again
    assert rel_err(resumed.heads, parts.heads) <= TOL and rel_err(resumed.embed, parts.embed) <= TOL
    assert torch.equal(resumed.indices, torch.arange(N_IMAGES))
    assert rel_err(resumed.means["heads"], parts.heads.mean(0)) <= TOL
    with pytest.raises(ValueError, match="other settings"):
        collect_head_contributions(loaded, TensorImages(images), last_n_layers=1, out_dir=tmp_path / "run",
                                   progress=False)


def test_compose_matches_ablate_posthoc(tiny):
    loaded, images, _, contributions = tiny
    parts = decompose(loaded.model, images, layers=[1, 2], normalize=True)
    means = contributions.means
    early = ablate_posthoc(parts, means, attn_layers=[0], mlp_layers=[0, 1, 2])
    assert rel_err(contributions.compose(ablate_rest=True), early) <= TOL
    heads = [(2, 1), (1, 3)]
    expected = ablate_posthoc(parts, means, attn_layers=[0], mlp_layers=[0, 1, 2], heads=heads)
    got = contributions.compose(mean_ablate_heads=heads, ablate_rest=True)
    assert rel_err(got, expected) <= TOL
    assert rel_err(got, early) > 1e-3  # the heads matter: the check above can fail
    assert rel_err(contributions.compose(ablate_rest=False), parts.embedding) <= TOL


# ------------------------------------------------------------------ TextSpan rows


def test_run_textspan_rows_equal_direct_text_span(tiny, tmp_path):
    _, _, _, contributions = tiny
    T = unit(torch.randn(25, 48, generator=torch.Generator().manual_seed(5)))
    texts = [f"text {j}" for j in range(25)]
    rows = run_textspan(contributions, T, texts, k=4, rank=6)
    assert sorted(rows) == [(layer, h) for layer in (1, 2) for h in range(4)]
    for (layer, h), row in rows.items():
        direct = text_span(contributions.heads[:, layer - 1, h], T, k=4, rank=6, texts=texts)
        assert torch.equal(row.indices, direct.indices)
        assert row.texts == direct.texts
        torch.testing.assert_close(row.variance_explained, direct.variance_explained, atol=1e-10, rtol=0)
        torch.testing.assert_close(row.reconstruction, direct.reconstruction, atol=1e-10, rtol=0)
    table = TextSpanTable(rows, texts)
    paths = table.write(tmp_path)
    data = json.loads(paths["json"].read_text())
    assert [h["head"] for h in data["heads"]] == [f"L{l}.H{h}" for l in (1, 2) for h in range(4)]
    assert data["heads"][0]["picks"][0]["text"] == table.texts((1, 0))[0] == texts[int(rows[(1, 0)].indices[0])]
    assert "## L2.H3" in paths["md"].read_text()


# ------------------------------------------------------------------ completeness


def test_completeness_at_full_rank_equals_early_ablated(tiny):
    _, _, _, contributions = tiny
    T = unit(torch.randn(40, 48, generator=torch.Generator().manual_seed(6)))
    early = contributions.compose(ablate_rest=True)
    # classes along centred embedding directions, so that predictions depend on the heads' variation
    classifier = unit(early[:5] - early.mean(0)).T
    labels = logits(early, classifier).argmax(-1)  # the early-ablated model is right on every image
    assert len(set(labels.tolist())) >= 3
    full = N_IMAGES  # the heads' rank is at most n_images, so N_IMAGES picks span each head's data
    table = completeness(contributions, T, classifier, labels, ks=(1, full), rank=80)
    assert table.early_ablated == 1.0
    assert table.baseline == accuracy(logits(contributions.embedding, classifier), labels, topk=(1,))["top1"]
    assert table.rows[1] == {"k": full, "top1": table.early_ablated}
    assert table.rows[0]["top1"] < 1.0  # one text per head is not enough: the equality above can fail
    # the reconstruction itself is exact at full rank and is not at k = 1
    stack = contributions.stack()
    exact = text_span(stack, T, k=full, rank=80).reconstruction
    assert rel_err(exact, stack) <= 1e-6
    assert rel_err(text_span(stack, T, k=1, rank=80).reconstruction, stack) > 1e-2
    # the three ways of giving TextSpan agree
    by_rows = {k: run_textspan(contributions, T, k=k, rank=80) for k in (1, full)}
    by_call = lambda C, k: text_span(C, T, k=k, rank=80)
    for source in (by_rows, by_call):
        assert completeness(contributions, source, classifier, labels, ks=(1, full)).rows == table.rows
    fig = completeness_figure(table)
    assert list(fig.data[0].x) == [1, full]
    assert "| baseline (no ablation) |" in table.to_markdown()


# ------------------------------------------------------------------ head pickers


def planted_contributions(planted=(3, 1), direction=None, n=60, D=16, H=3, seed=0) -> HeadContributions:
    """Isotropic noise heads, one of which also varies strongly along ``direction``."""
    g = torch.Generator().manual_seed(seed)
    heads = 0.05 * torch.randn(n, 2, H, D, generator=g)
    heads[:, planted[0] - 2, planted[1]] += torch.randn(n, 1, generator=g) * direction
    zeros = torch.zeros(n, D)
    return HeadContributions(heads=heads, layers=[2, 3], embed=zeros, embedding=heads.sum((1, 2)), labels=None,
                             indices=torch.arange(n), means={}, normalized=False, n_layers=4)


def test_heads_for_queries_finds_planted_head():
    g = torch.Generator().manual_seed(1)
    pool = unit(torch.randn(30, 16, generator=g))
    place = pool[7]
    contributions = planted_contributions(direction=place)
    queries = torch.stack([unit(place + 0.3 * unit(torch.randn(16, generator=g))), pool[11]])
    ranking = heads_for_queries(contributions, queries)
    assert ranking[0][0] == (3, 1)
    assert ranking[0][1] > 3 * ranking[1][1]
    assert len(ranking) == 6 and len(heads_for_queries(contributions, queries, top=2)) == 2
    # the TextSpan-based picker: the planted head's first text is the place text
    rows = run_textspan(contributions, pool, k=3, rank=16)
    assert int(rows[(3, 1)].indices[0]) == 7
    topic = heads_by_textspan_topic(rows, queries[:1], pool)
    assert topic[0][0] == (3, 1) and topic[0][1] > topic[1][1]
    # planting elsewhere moves the pick
    moved = planted_contributions(planted=(2, 0), direction=place)
    assert heads_for_queries(moved, queries)[0][0] == (2, 0)


# ------------------------------------------------------------------ spurious


def test_group_accuracy_by_hand():
    predictions = torch.tensor([0, 0, 1, 1, 1, 0])
    labels = torch.tensor([0, 1, 1, 1, 0, 0])
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    result = group_accuracy(predictions, labels, groups)
    assert result.per_group == {0: 0.5, 1: 1.0, 2: 0.5}
    assert result.worst_group == 0.5 and result.average == pytest.approx(4 / 6)


def test_spurious_table_matches_direct_ablations(tiny):
    loaded, images, _, contributions = tiny
    parts = decompose(loaded.model, images, layers=[1, 2], normalize=True)
    early = contributions.compose(ablate_rest=True)
    labels = torch.arange(N_IMAGES) // 2 % 2
    groups = torch.arange(N_IMAGES) % 4
    classifier = unit(early[[0, 2]] - early.mean(0)).T  # centred directions: predictions vary by image
    role = [(2, 1), (2, 3)]
    table = spurious_table(contributions, labels, groups, classifier, role, n_random_seeds=5, seed=10)
    ablated = lambda heads: ablate_posthoc(parts, contributions.means, attn_layers=[0], mlp_layers=[0, 1, 2],
                                           heads=heads)
    score = lambda y: group_accuracy(logits(y, classifier).argmax(-1), labels, groups)
    expected = {"baseline": score(parts.embedding), "extra ablations only": score(ablated([])),
                "role heads (automatic)": score(ablated(role))}
    randoms = [score(ablated(random_heads(contributions.head_keys(), 2, s))) for s in range(10, 15)]
    expected["random heads (2, best of 5)"] = max(randoms, key=lambda r: r.worst_group)
    assert [row.setting for row in table.rows] == ["baseline", "extra ablations only", "random heads (2, best of 5)",
                                                   "role heads (automatic)"]
    for row in table.rows:
        want = expected[row.setting]
        assert row.per_group == pytest.approx(want.per_group, abs=0) and row.average == want.average
        assert row.worst_group <= row.average
    assert len({tuple(sorted(row.per_group.items())) for row in table.rows}) > 1  # ablations change predictions
    assert len({tuple(random_heads(contributions.head_keys(), 2, s)) for s in range(10, 15)}) > 1
    with pytest.raises(ValueError, match="not among the kept layers"):
        spurious_table(contributions, labels, groups, classifier, [(0, 1)])

    # heads only: the same heads mean-ablated with nothing else
    both = spurious_table(contributions, labels, groups, classifier, role, n_random_seeds=5, seed=10, heads_only=True)
    assert [row.setting for row in both.rows[:4]] == [row.setting for row in table.rows]
    only = {row.setting: row for row in both.rows[4:]}
    assert list(only) == ["random heads (2, best of 5), heads only", "role heads (automatic), heads only"]
    heads_only = lambda heads: ablate_posthoc(parts, contributions.means, heads=heads)
    want = score(heads_only(role))
    assert only["role heads (automatic), heads only"].per_group == pytest.approx(want.per_group, abs=0)
    randoms = [score(heads_only(random_heads(contributions.head_keys(), 2, s))) for s in range(10, 15)]
    assert only["random heads (2, best of 5), heads only"].worst_group == max(r.worst_group for r in randoms)


def test_cue_and_class_effects_by_hand():
    """A part that only follows the cue has cue effect 2a and no class effect; one that follows the class, the
    reverse; a constant part has neither; effects add up like the parts do."""
    from vit_lens_clip.decompose import Decomposition
    from vit_lens_clip.methods.spurious import cue_and_class_effects, effects_markdown

    labels = torch.tensor([0, 0, 1, 1, 0, 1, 1, 0])
    cues = torch.tensor([0, 1, 0, 1, 1, 1, 0, 0])
    classifier = torch.zeros(3, 2)
    classifier[0, 1], classifier[0, 0] = 1.0, -1.0  # margin direction e0 * 2
    e0 = torch.tensor([1.0, 0.0, 0.0])
    sign = lambda v: (2 * v - 1).float()[:, None]
    heads = torch.stack([0.3 * sign(cues) * e0, 0.0 * sign(cues) * e0 + 0.5], dim=1)[:, None]  # [B, 1, 2, D]
    mlps = torch.stack([0.2 * sign(labels) * e0, torch.zeros(8, 3)], dim=1)  # [B, 2, D]
    attns = torch.stack([torch.zeros(8, 3), heads[:, 0].sum(1)], dim=1)
    embed = torch.full((8, 3), 0.1)
    parts = Decomposition(embed=embed, attns=attns, mlps=mlps, heads=heads, layers=[1],
                          embedding=embed + attns.sum(1) + mlps.sum(1), convention="equal_share", normalized=False)
    rows = {r.component: r for r in cue_and_class_effects(parts, classifier, labels, cues)}
    assert list(rows) == ["embed", "L0.attn", "L0.mlp", "L1.attn", "L1.H0", "L1.H1", "L1.mlp", "total"]
    assert rows["L1.H0"].cue == pytest.approx(2 * 0.3 * 2) and rows["L1.H0"].label == pytest.approx(0, abs=1e-7)
    assert rows["L0.mlp"].label == pytest.approx(2 * 0.2 * 2) and rows["L0.mlp"].cue == pytest.approx(0, abs=1e-7)
    assert rows["L1.H1"].cue == pytest.approx(0, abs=1e-7) and rows["embed"].label == pytest.approx(0, abs=1e-7)
    for field_ in ("cue", "label"):
        total = sum(getattr(r, field_) for k, r in rows.items() if k == "embed" or k.endswith((".attn", ".mlp")))
        assert total == pytest.approx(getattr(rows["total"], field_), abs=1e-6)
    table = effects_markdown(list(rows.values()), top=2)
    assert "L1.H0" in table and "L1.attn" not in table and "total" in table
    with pytest.raises(ValueError, match="both values"):
        cue_and_class_effects(parts, classifier, labels, torch.zeros(8, dtype=torch.long))


def test_dataset_cue_and_class_effects_add_up_on_tiny_model():
    from vit_lens_clip.methods.zeroshot import build_classifier

    loaded = tiny_loaded(seed=1)
    dataset = shapes_eval_set(loaded.preprocess, n_images=16, seed=0)
    names, templates = shapes_world.zero_shot_labels("bird")
    classifier = build_classifier(loaded, names, templates)
    rows = {r.component: r for r in dataset_cue_and_class_effects(loaded, dataset, classifier, batch_size=6, layers=[2])}
    n_layers = loaded.model.cfg.n_layers
    for field_ in ("cue", "label"):
        value = lambda k, field_=field_: getattr(rows[k], field_)
        parts = value("embed") + sum(value(f"L{l}.attn") + value(f"L{l}.mlp") for l in range(n_layers))
        assert parts == pytest.approx(value("total"), rel=1e-4, abs=1e-6)
        heads = sum(value(f"L2.H{h}") for h in range(loaded.model.cfg.n_heads))
        assert heads == pytest.approx(value("L2.attn"), rel=1e-4, abs=1e-6)
    assert abs(rows["total"].cue) + abs(rows["total"].label) > 0


def test_spurious_end_to_end_on_tiny_model(tmp_path):
    loaded = tiny_loaded(seed=1)
    dataset = shapes_eval_set(loaded.preprocess, n_images=16, seed=0)
    pool = ["on water", "on the grass", "on a beach", "in the snow", "a circle", "a red square", "a bird",
            "a blue star", "two crosses", "a large triangle", "in the top left", "a green diamond"]
    names, templates = shapes_bird_classes()
    table = run_spurious(loaded, dataset, classnames=names, templates=templates, last_n_layers=LAST, batch_size=8,
                         pool=pool, k=3, hand_picked=[(2, 0), (1, 1)], group_names=shapes_group_names(),
                         cache_dir=tmp_path, progress=False)
    # the same settings as one SpuriousConfig, and as a config with a keyword override, give the same table
    config = SpuriousConfig(classnames=names, templates=templates, last_n_layers=LAST, batch_size=8, pool=pool, k=3,
                            hand_picked=[(2, 0), (1, 1)], group_names=shapes_group_names(), cache_dir=tmp_path,
                            progress=False)
    for again in (run_spurious(loaded, dataset, config),
                  run_spurious(loaded, dataset, SpuriousConfig(**{**vars(config), "k": 7, "batch_size": 5}), k=3,
                               batch_size=8)):
        assert again.to_dict() == table.to_dict()
        assert torch.equal(again.classifier, table.classifier)
    # precomputed contributions (what StoredParts(folder).contributions() gives) with the groups: the same table
    items = LabelGroupItems(dataset, 2)
    stored = collect_head_contributions(loaded, items, LAST, 8, config.normalize, progress=False)
    class_labels, row_groups = items.unpack(stored.labels)
    stored = dataclasses.replace(stored, labels=class_labels)
    from_rows = run_spurious(loaded, config=config, contributions=stored, groups=row_groups)
    assert from_rows.to_dict() == table.to_dict()
    with pytest.raises(BadInputError, match="pass contributions and groups together"):
        run_spurious(loaded, config=config, contributions=stored)
    with pytest.raises(BadInputError, match="not both"):
        run_spurious(loaded, dataset, config, contributions=stored, groups=row_groups)
    with pytest.raises(BadInputError, match=f"collected with normalize={config.normalize}"):
        run_spurious(loaded, config=config, normalize=not config.normalize, contributions=stored, groups=row_groups)
    with pytest.raises(BadInputError, match="groups must be 16 integers"):
        run_spurious(loaded, config=config, contributions=stored, groups=row_groups[:3])
    settings = [row.setting for row in table.rows]
    assert settings[:2] == ["baseline", "extra ablations only"]
    assert any(s.startswith("random heads (1,") for s in settings)  # 15% of 8 kept heads -> 1 role head
    assert any(s.startswith("random heads (2,") for s in settings)  # as many as the hand-picked heads
    assert any(s.startswith("role heads (automatic") for s in settings)
    assert any(s.startswith("role heads (hand-picked)") for s in settings)
    for row in table.rows:
        assert set(row.per_group) == {0, 1, 2, 3}
        assert row.worst_group <= row.average + 1e-12
    assert len(table.role_heads) == 1 and table.role_heads[0] == table.head_scores[0][0]
    assert set(table.role_head_texts) == {table.role_heads[0], (2, 0), (1, 1)}
    json.dumps(table.to_dict())
    markdown = table.to_markdown()
    assert all(s in markdown for s in settings)

    # the extra-ablations row, recomputed from a direct decomposition of the same images
    items = LabelGroupItems(dataset, 2)
    images = torch.stack([dataset[i]["image"] for i in range(16)])
    labels = torch.tensor([dataset[i]["label"] for i in range(16)])
    groups = torch.tensor([dataset[i]["group"] for i in range(16)])
    assert torch.equal(items.unpack(torch.tensor([items[i]["label"] for i in range(16)]))[1], groups)
    assert torch.equal(groups, torch.arange(16) % 4)
    parts = decompose(loaded.model, images, layers=[1, 2], normalize=True)
    means = {"embed": parts.embed.mean(0), "attns": parts.attns.mean(0), "mlps": parts.mlps.mean(0),
             "heads": parts.heads.mean(0)}
    from vit_lens_clip.methods.zeroshot import build_classifier

    classifier = build_classifier(loaded, *shapes_world.zero_shot_labels("bird"))
    torch.testing.assert_close(table.classifier, classifier)  # the table hands back what it scored with
    for setting, y in [("baseline", parts.embedding),
                       ("extra ablations only", ablate_posthoc(parts, means, attn_layers=[0], mlp_layers=[0, 1, 2])),
                       ("role heads (hand-picked)", ablate_posthoc(parts, means, attn_layers=[0], mlp_layers=[0, 1, 2],
                                                                   heads=[(2, 0), (1, 1)]))]:
        expected = group_accuracy(logits(y, classifier).argmax(-1), labels, groups)
        row = table.row(setting)
        assert (row.worst_group, row.average) == (expected.worst_group, expected.average)


def test_spurious_config_checks_and_shapes_defaults(tmp_path):
    with pytest.raises(TypeError, match="unknown settings \\['n_image'\\]"):
        run_spurious(None, None, n_image=3)
    with pytest.raises(ValueError, match="picker"):
        SpuriousConfig(picker="by hand")
    with pytest.raises(ValueError, match="k must be at least 1"):
        SpuriousConfig(k=0)
    config = SpuriousConfig(classnames=["a", "b"], queries=["on water"], hand_picked=[(1, 0)], pool=["x", "y"])
    assert (config.classnames, config.queries, config.hand_picked, config.pool) == (
        ("a", "b"), ("on water",), ((1, 0),), ("x", "y"))
    with pytest.raises(AttributeError):
        config.k = 3  # frozen

    # the method holds no synthetic data: the caller gives the set and the task
    loaded = tiny_loaded(seed=1)
    pool = ["on water", "on the grass", "a bird", "a red square", "in the snow", "a circle"]
    names, templates = shapes_bird_classes()
    config = SpuriousConfig(classnames=names, templates=templates, last_n_layers=LAST, batch_size=8, pool=pool, k=2,
                            n_random_seeds=1, cache_dir=tmp_path, progress=False)
    with pytest.raises(BadInputError, match="needs a dataset"):
        run_spurious(loaded, config=config)
    with pytest.raises(BadInputError, match="classnames and templates"):
        run_spurious(loaded, shapes_eval_set(loaded.preprocess, 8, 0), config, classnames=None)
    table = run_spurious(loaded, shapes_eval_set(loaded.preprocess, 8, 0), config, queries=SHAPES_PLACE_QUERIES,
                         group_names=shapes_group_names())
    assert table.n_images == 8
    assert set(table.to_dict()["rows"][0]["per_group"]) == set(shapes_group_names().values())


def test_spurious_holds_no_shapes_world_names():
    import vit_lens_clip.methods.spurious as spurious

    for name in ("SHAPES_PLACE_QUERIES", "shapes_group_names", "shapes_eval_set", "shapes_world"):
        assert not hasattr(spurious, name), name
