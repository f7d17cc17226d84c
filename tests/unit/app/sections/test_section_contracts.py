"""The report's section contract over every section module, each imported by its path: every Section class of
the package is registered once, names are unique, what a section declares (needs, uses, gives) are fields of the
typed ReportValues, and the order gives each value before a section needs or uses it. Also the small helpers of
base, tasks and collection."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from types import SimpleNamespace

import torch
from conftest import tiny_clip, type_checks_off

from vit_lens_clip.app import sections as registry
from vit_lens_clip.app.config import ReportConfig
from vit_lens_clip.app.sections import (
    ablation,
    attention,
    base,
    collection,
    completeness,
    data,
    decomposition,
    heatmaps,
    neurons,
    sae,
    segmentation,
    spurious,
    tasks,
    textspan,
    zero_shot,
)

SECTION_MODULES = (ablation, attention, completeness, data, decomposition, heatmaps, neurons, sae, segmentation,
                   spurious, textspan, zero_shot)


def _section_classes(module):
    return [c for _, c in inspect.getmembers(module, inspect.isclass)
            if c.__module__ == module.__name__ and hasattr(c, "gives") and hasattr(c, "run")]


def test_every_section_class_is_registered_once():
    registered = [type(s) for s in registry.SECTIONS]
    assert len(set(registered)) == len(registered)
    for module in SECTION_MODULES:
        classes = _section_classes(module)
        assert classes, f"{module.__name__} defines no section"
        for cls in classes:
            assert cls in registered, f"{cls.__name__} is not in SECTIONS"
    for section in registry.SECTIONS:
        assert isinstance(section, base.Section)  # the runtime-checkable protocol


def test_names_unique_and_declarations_typed():
    names = [s.name for s in registry.SECTIONS]
    assert len(set(names)) == len(names)
    fields = {f.name for f in dataclasses.fields(base.ReportValues)}
    assert base.ReportValues.names() == fields
    for section in registry.SECTIONS:
        for kind in ("needs", "uses", "gives"):
            declared = getattr(section, kind)
            assert isinstance(declared, tuple) and set(declared) <= fields, (section.name, kind)
        assert not set(section.needs) & set(section.uses), section.name  # a value is needed or merely used


def test_order_gives_before_needs():
    given: set[str] = set()
    for section in registry.SECTIONS:
        missing = (set(section.needs) | set(section.uses)) - given
        assert not missing, f"{section.name} runs before {sorted(missing)} is given"
        given |= set(section.gives)


def test_context_says_why_a_value_is_missing():
    with type_checks_off():  # no model needed here
        ctx = base.ReportContext(config=ReportConfig(out=Path("o"), quiet=True), loaded=None)
    assert not ctx.has("parts") and ctx.why_missing("parts") == "no earlier section gave 'parts'"
    ctx.missing["parts"] = "no images"
    assert ctx.why_missing("parts") == "no images" and ctx.progress is False and ctx.out == Path("o")
    ctx.values.images = True
    assert ctx.has("images")
    assert issubclass(base.SectionSkipped, Exception)


def test_tasks_helpers(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("cat\n\n  dog \nbird\n")
    assert tasks.class_names_file(str(path)) == ["cat", "dog", "bird"]

    def tokenizer(texts):
        out = torch.zeros(len(texts), 16, dtype=torch.long)
        for i, t in enumerate(texts):
            ids = [1 + (ord(c) % 300) for c in t][:15]
            out[i, : len(ids)] = torch.tensor(ids)
            out[i, len(ids)] = 49407
        return out

    loaded = SimpleNamespace(clip=tiny_clip(seed=12), tokenizer=tokenizer, device=torch.device("cpu"))
    with type_checks_off():  # a stand-in context holding only the model
        task = tasks.class_task(SimpleNamespace(loaded=loaded), ["cat", "dog"], torch.tensor([0, -1, 1]))
    assert task.name == "classes" and task.classifier.shape == (48, 2) and task.labels.tolist() == [0, -1, 1]
    assert torch.allclose(task.classifier.norm(dim=0), torch.ones(2), atol=1e-5)


def test_collection_reads_shapes_fingerprints():
    match = collection.SHAPES_FINGERPRINT.fullmatch("shapes:n=41,seed=-3")
    assert match and match.groups() == ("41", "-3")
    assert collection.SHAPES_FINGERPRINT.fullmatch("folder:/x:n=3:abc") is None
