"""The CLI's error contract (docs/cli.md): every expected failure prints exactly one line on stderr and exits
with status 2, before any heavy work; ``--debug`` shows the traceback instead."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vit_lens_clip.embedded import EMBEDDED_MODEL_DIR

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "vit_lens_clip.app.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cli")
    empty = d / "empty.txt"
    empty.write_text("\n  \n")
    a_file = d / "a_file"
    a_file.write_text("not a folder")
    weights = (EMBEDDED_MODEL_DIR / "open_clip_model.safetensors").read_bytes()
    truncated = d / "truncated.safetensors"
    truncated.write_bytes(weights[: len(weights) // 2])
    garbage = d / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 100)
    pickled = d / "pickled"  # an open_clip local-dir whose weights are a pickle with a non-tensor object
    pickled.mkdir()
    config = json.loads((EMBEDDED_MODEL_DIR / "open_clip_config.json").read_text())
    config.pop("weights_sha256", None)
    (pickled / "open_clip_config.json").write_text(json.dumps(config))
    torch.save({"state_dict": {"x": pathlib.PurePosixPath("/etc")}}, pickled / "open_clip_pytorch_model.bin")
    return {"empty": empty, "a_file": a_file, "truncated": truncated, "garbage": garbage, "pickled": pickled, "dir": d}


CASES = {
    "missing --images folder": lambda f: ["report", "--out", str(f["dir"] / "o1"), "--images", str(f["dir"] / "nope")],
    "empty --texts file": lambda f: ["report", "--out", str(f["dir"] / "o2"), "--texts", str(f["empty"])],
    "empty --classes file": lambda f: ["report", "--out", str(f["dir"] / "o3"), "--classes", str(f["empty"])],
    "bad option value": lambda f: ["report", "--out", str(f["dir"] / "o4"), "--k", "0"],
    "file-valued --out": lambda f: ["report", "--out", str(f["a_file"])],
    "--out below a file": lambda f: ["report", "--out", str(f["a_file"] / "sub")],
    "segment: file-valued --out": lambda f: ["segment", "--out", str(f["a_file"])],
    "missing weights file": lambda f: ["hooks", "--model", "ViT-B-32", "--pretrained", str(f["dir"] / "no.safetensors")],
    "truncated safetensors": lambda f: ["hooks", "--model", "ViT-B-32", "--pretrained", str(f["truncated"])],
    "not a safetensors file": lambda f: ["hooks", "--model", "ViT-B-32", "--pretrained", str(f["garbage"])],
    "refused pickle": lambda f: ["hooks", "--model", f"local-dir:{f['pickled']}"],
    "unknown model name": lambda f: ["hooks", "--model", "ViT-Nope-99"],
    "missing --tokenizer folder": lambda f: ["report", "--out", str(f["dir"] / "o5"), "--tokenizer", str(f["dir"] / "no")],
    "--tokenizer without a tokenizer": lambda f: ["hooks", "--text", "--tokenizer", str(f["dir"])],
    "segment: --tokenizer on a file": lambda f: ["segment", "--out", str(f["dir"] / "o6"), "--tokenizer", str(f["empty"])],
}


_DRIVER = """
import json, os, sys
import vit_lens_clip.app.cli as cli
import vit_lens_clip.app.report, vit_lens_clip.loading, vit_lens_clip.methods.spatial.evaluate  # imported once, then forked
cases, out = json.loads(sys.argv[1]), sys.argv[2]
results = {}
for name, argv in cases.items():
    err = os.path.join(out, str(len(results)) + ".err")
    pid = os.fork()
    if pid == 0:  # the child is a separate process with its own stderr and exit status, as `vit-lens-clip ...` is
        fd = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 2)
        sys.argv = ["vit-lens-clip", *argv]
        try:
            code = cli.main(argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            import traceback
            traceback.print_exc()
            code = 1
        sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    results[name] = {"status": os.waitstatus_to_exitcode(status), "stderr": open(err).read()}
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def outcomes(files, tmp_path_factory):
    """Every case run as its own process (forked after the imports, so the suite pays for them once)."""
    work = tmp_path_factory.mktemp("cli_runs")
    cases = {name: make(files) for name, make in CASES.items()}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _DRIVER, json.dumps(cases), str(work)], cwd=work, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", sorted(CASES))
def test_expected_failure_is_one_line_and_status_2(case, outcomes):
    status, stderr = outcomes[case]["status"], outcomes[case]["stderr"]
    lines = stderr.strip().splitlines()
    assert status == 2 and len(lines) == 1, (case, status, stderr[-3000:])
    assert lines[0].startswith("vit-lens-clip ") and "error:" in lines[0]
    assert "Traceback" not in stderr and "weights_only=False" not in stderr


def test_entry_point_one_line_and_debug_traceback(files, tmp_path):
    """The real entry point (``python -m vit_lens_clip.app.cli``): one line; with --debug, the traceback."""
    proc = _cli("report", "--out", str(files["a_file"]), cwd=tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-3000:]
    proc = _cli("--debug", "report", "--out", str(files["a_file"]), cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "OutputFolderError" in proc.stderr


def test_report_sae_folder_is_checked_before_any_section(tmp_path):
    """`report --sae /missing` failed only after every other section had run (a minute of work, then the error)."""
    from e2e.test_cli_arguments import run_cli

    not_an_sae = tmp_path / "not_an_sae"
    not_an_sae.mkdir()
    for sae, expected in [(tmp_path / "missing", "no such folder"), (not_an_sae, "holds no cfg.json or config.json")]:
        result, stderr = run_cli(["report", "--out", str(tmp_path / "never"), "--sae", str(sae)], tmp_path)
        lines = stderr.strip().splitlines()
        assert result["status"] == 2 and len(lines) == 1 and "--sae" in lines[0] and expected in lines[0], stderr[-3000:]
        assert not result["torch"] and not (tmp_path / "never").exists()


def test_textspan_into_a_read_only_out_is_one_line(tmp_path):
    """`textspan --from C --out READ_ONLY` printed a traceback (PermissionError) after TextSpan had run."""
    from e2e.test_cli_arguments import read_only_folder, run_cli

    collection = tmp_path / "c"
    collection.mkdir()
    (collection / "collection.json").write_text("{}")
    out = read_only_folder(tmp_path)
    result, stderr = run_cli(["textspan", "--from", str(collection), "--out", str(out)], tmp_path)
    lines = stderr.strip().splitlines()
    assert result["status"] == 2 and len(lines) == 1 and "not writable" in lines[0], stderr[-3000:]
    assert not result["torch"]
