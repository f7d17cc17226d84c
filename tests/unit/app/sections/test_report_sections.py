"""The report's section contract without a model: declared values, the order that gives them, the check that a
section sets only what it declares, and the ablation section's per-image subset of a Decomposition."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch
from conftest import type_checks_off

from vit_lens_clip.app.config import SECTION_NAMES, ReportConfig
from vit_lens_clip.app.report import run_sections
from vit_lens_clip.app.sections import SECTIONS, ReportContext, ReportValues
from vit_lens_clip.app.sections.ablation import image_rows
from vit_lens_clip.decompose import Decomposition


def test_sections_declare_typed_values_given_by_an_earlier_section():
    fields = ReportValues.names()
    given: set[str] = set()
    for section in SECTIONS:
        declared = set(section.needs) | set(section.uses) | set(section.gives)
        assert declared <= fields, (section.name, declared - fields)
        assert set(section.needs) | set(section.uses) <= given, section.name  # given before it runs
        given |= set(section.gives)
    assert given == fields  # every value is given by some section
    assert {s.name for s in SECTIONS if s.skippable} == set(SECTION_NAMES)


def test_values_count_none_and_empty_as_missing():
    values = ReportValues(tasks=[], images=True)
    assert not values.has("tasks") and values.has("images") and not values.has("parts")


class _Gives:
    name, needs, uses, gives, skippable, grad = "gives", (), (), ("pool",), False, False

    def run(self, ctx: ReportContext) -> None:
        ctx.values.pool = ["a text"]


class _SetsUndeclared(_Gives):
    name, gives = "sneaky", ()


class _NeedsTasks(_Gives):
    name, needs, gives = "needs_tasks", ("tasks",), ()

    def run(self, ctx: ReportContext) -> None:
        raise AssertionError("a section whose needs are missing must not run")


def _context() -> ReportContext:
    with type_checks_off():
        return ReportContext(config=ReportConfig(quiet=True), loaded=SimpleNamespace())


def test_run_sections_skips_on_missing_needs_and_refuses_undeclared_values():
    ctx = _context()
    ctx.missing["tasks"] = "the images have no class labels"
    run_sections(ctx, (_Gives(), _NeedsTasks()))
    assert ctx.values.pool == ["a text"] and set(ctx.timings) == {"gives"}
    assert ctx.numbers["skipped_sections"] == {"needs_tasks": "needs tasks: the images have no class labels"}
    with pytest.raises(RuntimeError, match=r"sneaky set values \['pool'\]"):
        run_sections(_context(), (_SetsUndeclared(),))


def test_image_rows_keeps_every_field():
    b, n_layers, n_kept, n_heads, d, n_src = 5, 3, 2, 2, 4, 3
    parts = Decomposition(
        embed=torch.randn(b, d), attns=torch.randn(b, n_layers, d), mlps=torch.randn(b, n_layers, d),
        heads=torch.randn(b, n_kept, n_heads, d), layers=[1, 2], embedding=torch.randn(b, d),
        convention="equal_share", normalized=True, head_sources=torch.randn(b, n_kept, n_heads, n_src, d),
        raw={"embed": torch.randn(b, d)}, extra={"pool_mlp": torch.randn(b, d)})
    keep = torch.tensor([True, False, True, True, False])
    sub = image_rows(parts, keep)
    for field in dataclasses.fields(Decomposition):
        before, after = getattr(parts, field.name), getattr(sub, field.name)
        if isinstance(before, torch.Tensor):
            assert torch.equal(after, before[keep]), field.name
        elif isinstance(before, dict):
            assert set(after) == set(before) and all(torch.equal(after[k], v[keep]) for k, v in before.items())
        else:
            assert after == before, field.name
    assert torch.allclose(sub.total(), parts.total()[keep])


def test_report_images_folder_with_a_hidden_folder_is_not_labelled(tmp_path):
    """A flat --images folder that also holds .ipynb_checkpoints/ is unlabelled (the hidden folder is no class)."""
    from PIL import Image

    from vit_lens_clip.app.config import ReportConfig
    from vit_lens_clip.app.sections.base import ReportContext
    from vit_lens_clip.app.sections.data import load_dataset
    from vit_lens_clip.loading import load_clip

    for name in ("a.png", "b.png", ".ipynb_checkpoints/a-checkpoint.png"):
        (tmp_path / "imgs" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (20, 20), (255, 0, 0)).save(tmp_path / "imgs" / name)
    ctx = ReportContext(config=ReportConfig(out=tmp_path / "out", images=str(tmp_path / "imgs")), loaded=load_clip())
    dataset = load_dataset(ctx)
    assert dataset.labels == [] and len(dataset) == 2
