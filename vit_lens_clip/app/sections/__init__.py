"""The report's sections, in the order they run. Adding one: a file here and one entry below."""

from vit_lens_clip.app.sections.ablation import AblationSection
from vit_lens_clip.app.sections.attention import AttentionSection
from vit_lens_clip.app.sections.base import ReportContext, ReportValues, Section, SectionSkipped, Task
from vit_lens_clip.app.sections.completeness import CompletenessSection
from vit_lens_clip.app.sections.data import DataSection
from vit_lens_clip.app.sections.decomposition import DecompositionSection
from vit_lens_clip.app.sections.heatmaps import HeatmapSection
from vit_lens_clip.app.sections.neurons import NeuronsSection
from vit_lens_clip.app.sections.sae import SAESection
from vit_lens_clip.app.sections.segmentation import SegmentationSection
from vit_lens_clip.app.sections.spurious import SpuriousSection
from vit_lens_clip.app.sections.textspan import TextSpanSection
from vit_lens_clip.app.sections.zero_shot import ZeroShotSection

SECTIONS: tuple[Section, ...] = (
    DataSection(),
    DecompositionSection(),
    ZeroShotSection(),
    AblationSection(),
    TextSpanSection(),
    CompletenessSection(),
    HeatmapSection(),
    SegmentationSection(),
    SpuriousSection(),
    AttentionSection(),
    NeuronsSection(),
    SAESection(),
)

__all__ = ["SECTIONS", "ReportContext", "ReportValues", "Section", "SectionSkipped", "Task"]
