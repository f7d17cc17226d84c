"""Where a report's numbers come from: software versions, the model and a digest of its weights, the command
line, the date and the machine. Written to results.json (``provenance``) and shown at the top of the page, so a
report can be cited and its numbers traced to what produced them."""

from __future__ import annotations

import os
import platform
import shlex
import sys
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Optional, Sequence

import torch

from vit_lens_clip.integrity import state_dict_sha256
from vit_lens_clip.loading import LoadedCLIP

PACKAGES = ("vit_lens_clip", "torch", "open_clip_torch")


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def _device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def report_provenance(loaded: LoadedCLIP, command_line: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Versions, model name and pretrained tag, sha256 of the loaded weights (every parameter and buffer of the
    image tower as run), the command line (``command_line``, else this process's), UTC date, machine, device."""
    argv = list(command_line) if command_line is not None else [os.path.basename(sys.argv[0]), *sys.argv[1:]]
    return {
        "versions": {package: _version(package) for package in PACKAGES},
        "model": {"name": loaded.name, "pretrained": loaded.pretrained,
                  "weights_sha256": state_dict_sha256(loaded.model)},
        "command": shlex.join(argv),
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpu_count": os.cpu_count()},
        "device": _device_name(loaded.device),
    }


def provenance_markdown(provenance: dict[str, Any]) -> str:
    """The provenance as a short Markdown list for the page."""
    versions = ", ".join(f"{name} {v}" for name, v in provenance["versions"].items())
    model, machine = provenance["model"], provenance["machine"]
    return "\n".join([
        f"- Model: **{model['name']}** (pretrained: {model['pretrained'] or 'none'}); weights sha256 "
        f"`{model['weights_sha256']}`",
        f"- Command: `{provenance['command']}`",
        f"- Date (UTC): {provenance['date_utc']}",
        f"- Software: {versions}",
        f"- Machine: {machine['platform']}, Python {machine['python']}, {machine['cpu_count']} CPUs; "
        f"device {provenance['device']}",
    ])
