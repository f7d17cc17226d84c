"""Issue 29: a command-line mistake (an option's range, a device, a model name, a path, a text file's encoding) is
reported in one line with status 2 in under a second, before torch or open_clip is imported, and before anything
is created (docs/cli.md, "Arguments first")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

import vit_lens_clip
from vit_lens_clip.embedded import EMBEDDED_MODEL_DIR

SOURCE = Path(vit_lens_clip.__file__).resolve().parents[1]  # the package under test, also in the subprocess

_DRIVER = """
import json, sys, time
start = time.perf_counter()
from vit_lens_clip.app.cli import main
try:
    status = main(json.loads(sys.argv[1]))
except SystemExit as e:
    status = e.code
seconds = time.perf_counter() - start
sys.stderr.flush()
print(json.dumps({"status": status, "seconds": seconds, "torch": "torch" in sys.modules,
                  "open_clip": "open_clip" in sys.modules}))
"""


def run_cli(argv: list[str], cwd: Path, **env: str) -> tuple[dict, str]:
    environment = {**os.environ, "PYTHONPATH": str(SOURCE), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **env}
    proc = subprocess.run([sys.executable, "-c", _DRIVER, json.dumps(argv)], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=300)
    lines = proc.stdout.strip().splitlines()
    assert lines, proc.stderr[-3000:]
    return json.loads(lines[-1]), proc.stderr


def read_only_folder(tmp: Path) -> Path:
    folder = tmp / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):  # root ignores the mode bits: a folder the kernel refuses to write into
        folder = Path("/sys/vit_lens_clip_out")
        if os.access("/sys", os.W_OK) and os.path.isdir("/sys") and _sys_writable():
            pytest.skip("no read-only folder available to this user")
    return folder / "out"


def _sys_writable() -> bool:
    try:
        os.close(os.open("/sys/.vit_lens_clip_probe", os.O_CREAT | os.O_WRONLY))
        os.unlink("/sys/.vit_lens_clip_probe")
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("arguments")
    (d / "images").mkdir()
    (d / "latin1.txt").write_bytes("a caf\xe9\nna\xefve art\n".encode("latin-1"))
    weights = load_file(str(EMBEDDED_MODEL_DIR / "open_clip_model.safetensors"))
    save_file({k: v * float("nan") for k, v in weights.items()}, str(d / "nan.safetensors"))
    return {"dir": d, "images": d / "images", "latin1": d / "latin1.txt", "nan": d / "nan.safetensors"}


def collect(f, *extra: str) -> list[str]:
    return ["collect", "--data", f"folder:{f['images']}", "--out", str(f["dir"] / "never"), *extra]


CASES = {
    "collect --batch-size 0": (lambda f: collect(f, "--batch-size", "0"), "--batch-size must be at least 1"),
    "collect --threads -1": (lambda f: collect(f, "--threads", "-1"), "--threads must not be negative"),
    "collect --seed -1": (lambda f: collect(f, "--seed", "-1"), "--seed must not be negative"),
    "collect --shard-size 0": (lambda f: collect(f, "--shard-size", "0"), "--shard-size must be at least 1"),
    "collect --device bogus": (lambda f: collect(f, "--device", "bogus"), "is not a device"),
    "collect missing data folder": (lambda f: ["collect", "--data", f"folder:{f['dir'] / 'nope'}", "--out",
                                               str(f["dir"] / "never")], "no such image folder"),
    "collect latin-1 texts": (lambda f: collect(f, "--parts", "heads,scores", "--texts", str(f["latin1"])), "UTF-8"),
    "hooks --device bogus": (lambda f: ["hooks", "--device", "bogus"], "is not a device"),
    "hooks --model hf-hub:x/y offline": (lambda f: ["hooks", "--model", "hf-hub:x/y"], "offline"),
    "hooks NaN weights on the embedded model": (lambda f: ["hooks", "--pretrained", str(f["nan"])], "local-dir"),
    "hooks NaN weights on a local-dir model": (lambda f: ["hooks", "--model", f"local-dir:{EMBEDDED_MODEL_DIR}",
                                                          "--pretrained", str(f["nan"])], "local-dir"),
    "bench --arch ViT-B-99": (lambda f: ["bench", "--arch", "ViT-B-99"], "unknown open_clip model 'ViT-B-99'"),
    "bench --suite memory with one unknown of two": (lambda f: ["bench", "--suite", "memory", "--arch",
                                                               "ViT-B-16,ViT-B-99"], "unknown open_clip model 'ViT-B-99'"),
    "train-embedded --batch-size 0": (lambda f: ["train-embedded", "--out", str(f["dir"] / "never"), "--batch-size",
                                                 "0"], "--batch-size must be at least 1"),
    "segment missing input": (lambda f: ["segment", "--dataset", "folder", str(f["dir"] / "nope"), "--out",
                                         str(f["dir"] / "never")], "nope"),
    "report --k 0": (lambda f: ["report", "--out", str(f["dir"] / "never"), "--k", "0"], "--k must be at least 1"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_argument_error_is_one_line_fast_and_before_torch(case, files, tmp_path):
    make, expected = CASES[case]
    result, stderr = run_cli(make(files), tmp_path, HF_HOME=str(tmp_path / "hf"))
    lines = stderr.strip().splitlines()
    assert result["status"] == 2 and len(lines) == 1, (case, result, stderr[-3000:])
    assert lines[0].startswith("vit-lens-clip ") and expected in lines[0], lines[0]
    assert not result["torch"] and not result["open_clip"], (case, "imported before the error")
    assert result["seconds"] < 1.0, (case, result["seconds"])
    assert not (files["dir"] / "never").exists(), f"{case} created its output folder"


def test_cuda_without_a_gpu_is_refused_before_torch(files, tmp_path):
    from vit_lens_clip.app.preflight import cuda_device_count

    if cuda_device_count():
        pytest.skip("this machine has a GPU")
    result, stderr = run_cli(collect(files, "--device", "cuda"), tmp_path)
    assert result["status"] == 2 and len(stderr.strip().splitlines()) == 1, stderr[-3000:]
    assert "no CUDA GPU" in stderr and not result["torch"]
    assert not (files["dir"] / "never").exists()


def test_read_only_out_is_refused_before_torch(files, tmp_path):
    out = read_only_folder(tmp_path)
    result, stderr = run_cli(["collect", "--data", f"folder:{files['images']}", "--out", str(out)], tmp_path)
    assert result["status"] == 2 and len(stderr.strip().splitlines()) == 1, stderr[-3000:]
    assert "not writable" in stderr and not result["torch"]
    assert result["seconds"] < 1.0


def test_trainer_module_batch_size_zero_is_one_line(tmp_path):
    """`python -m vit_lens_clip.embedded.train --batch-size 0` (the trainer's own command line) started training."""
    environment = {**os.environ, "PYTHONPATH": str(SOURCE), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "vit_lens_clip.embedded.train", "--out", str(tmp_path / "run"),
                           "--batch-size", "0", "--steps", "1", "--eval-every", "0"], cwd=tmp_path, env=environment,
                          capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "--batch-size must be at least 1" in lines[0], proc.stderr[-3000:]
    assert not (tmp_path / "run").exists()
