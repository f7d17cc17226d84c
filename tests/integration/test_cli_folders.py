"""Issue 26: every folder the command line reads or writes is a store with a contract (docs/cli.md, "Folders"):
identity is content, one writer per folder, writes stay inside and never follow a symlink, a foreign folder is
refused, bad inputs are skipped and listed, a full disk or an oversized ``scores`` run is one line."""

from __future__ import annotations

import errno
import io
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vit_lens_clip
from vit_lens_clip.app.cli import main
from vit_lens_clip.datasets.folder import ImageFolder
from vit_lens_clip.errors import CorruptFileError

SOURCE = Path(vit_lens_clip.__file__).resolve().parents[1]  # the package under test, also in subprocesses


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SOURCE), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def cli(capsys, *argv: str) -> tuple[int, list[str]]:
    """``vit-lens-clip ARGV`` in this process: (status, stderr lines without progress bars)."""
    capsys.readouterr()
    status = main(list(argv))
    err = capsys.readouterr().err
    return status, [l for l in err.splitlines() if l.startswith("vit-lens-clip ")]


def write_images(folder: Path, n: int = 4, seed: int = 0, fmt: str = "bmp") -> list[Path]:
    """n small RGB images; BMP files are uncompressed, so new pixels give a file of the same size."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"img{i}.{fmt}"
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def embeddings(out: Path) -> torch.Tensor:
    from vit_lens_clip.decompose.store import StoredParts

    return StoredParts(out).read(["embedding"])["embedding"]


# ------------------------------------------------------------------------------------------ identity is content


def test_images_replaced_under_the_same_names_are_not_the_old_collection(tmp_path, capsys):
    """The fingerprint was the file names only: new pixels under old names returned the old embeddings."""
    paths = write_images(tmp_path / "imgs", seed=0)
    out = tmp_path / "c"
    assert cli(capsys, "collect", "--data", f"folder:{tmp_path / 'imgs'}", "--out", str(out), "--quiet")[0] == 0
    stats = [p.stat() for p in paths]
    write_images(tmp_path / "imgs", seed=1)  # same names, same sizes (BMP)
    for p, st in zip(paths, stats):
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the old mtimes: only the content differs
    assert [p.stat().st_size for p in paths] == [st.st_size for st in stats]
    status, lines = cli(capsys, "collect", "--data", f"folder:{tmp_path / 'imgs'}", "--out", str(out), "--quiet")
    assert status == 2 and len(lines) == 1 and "different dataset" in lines[0], lines


def test_texts_edited_with_the_same_line_count_are_not_the_old_scores(tmp_path, capsys):
    """The texts were recorded as (path, line count): an edited pool of the same length returned old scores."""
    write_images(tmp_path / "imgs", n=2)
    pool = tmp_path / "pool.txt"
    pool.write_text("a red circle\na blue square\n")
    argv = ["collect", "--data", f"folder:{tmp_path / 'imgs'}", "--out", str(tmp_path / "c"), "--parts",
            "heads,embed,scores", "--texts", str(pool), "--last-layers", "1", "--quiet"]
    assert cli(capsys, *argv)[0] == 0
    pool.write_text("a green star\na small bird\n")
    status, lines = cli(capsys, *argv)
    assert status == 2 and len(lines) == 1 and "different texts" in lines[0], lines


# ------------------------------------------------------------------------------------------ one writer


def test_second_collect_on_the_same_folder_is_refused_and_a_killed_run_resumes(tmp_path, capsys):
    """Two `collect --out C` wrote into one folder at once; after a SIGKILL the lock must not block the resume. The
    first collect is a real process, frozen while it writes, then killed; the second and the resume run here."""
    out = tmp_path / "c"
    argv = ["collect", "--data", "shapes:16", "--out", str(out), "--batch-size", "4", "--checkpoint-every", "1",
            "--quiet"]
    first = subprocess.Popen([sys.executable, "-m", "vit_lens_clip", *argv], env=env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (out / "collection.json").is_file():  # the first run is writing: freeze it there
            assert first.poll() is None and time.monotonic() < deadline, "the first collect ended early"
            time.sleep(0.05)
        first.send_signal(signal.SIGSTOP)
        status, lines = cli(capsys, *argv)
        assert status == 2 and len(lines) == 1, lines
        assert "being written by another process" in lines[0] and f"pid {first.pid}" in lines[0], lines[0]
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert cli(capsys, *argv)[0] == 0
    assert manifest(out)["n_images"] == 16


# ------------------------------------------------------------------------------------------ writes stay inside


def test_a_foreign_folder_with_a_manifest_is_refused_and_kept(tmp_path, capsys):
    """collect --out U merged its manifest over the user's own manifest.json."""
    write_images(tmp_path / "imgs", n=2)
    user = tmp_path / "u"
    user.mkdir()
    (user / "manifest.json").write_text('{"mine": true}')
    status, lines = cli(capsys, "collect", "--data", f"folder:{tmp_path / 'imgs'}", "--out", str(user), "--quiet")
    assert status == 2 and len(lines) == 1 and "not empty" in lines[0], lines
    assert (user / "manifest.json").read_text() == '{"mine": true}'
    assert sorted(p.name for p in user.iterdir()) == ["manifest.json"]


def test_symlinks_in_the_output_folder_are_never_followed_for_writing(tmp_path, capsys):
    """`out/collection.json.tmp -> ../x` overwrote x (and every other NAME.tmp the same way)."""
    write_images(tmp_path / "imgs", n=3)
    out = tmp_path / "c"
    argv = ["collect", "--data", f"folder:{tmp_path / 'imgs'}", "--out", str(out), "--quiet"]
    assert cli(capsys, *argv)[0] == 0
    info = json.loads((out / "collection.json").read_text())
    info["complete"] = False  # an interrupted run, to be resumed: every file is written again
    (out / "collection.json").write_text(json.dumps(info))
    targets = {}
    for name in ("collection.json.tmp", "manifest.json.tmp", "means.safetensors.tmp",
                 "ranks/rank_00000/run.json.tmp", "ranks/rank_00000/means_state.safetensors.tmp",
                 "ranks/rank_00000/parts/manifest.json.tmp"):
        target = tmp_path / f"precious-{len(targets)}"
        target.write_text("keep me")
        (out / name).symlink_to(os.path.relpath(target, (out / name).parent))
        targets[name] = target
    status, lines = cli(capsys, *argv)
    assert status == 0, lines
    assert all(t.read_text() == "keep me" for t in targets.values())
    assert manifest(out)["n_images"] == 3 and embeddings(out).shape[0] == 3


def test_a_symlinked_folder_inside_the_output_folder_is_refused(tmp_path, capsys):
    """`out/ranks/rank_00000/parts -> ../elsewhere`: a resume wrote its shards outside --out."""
    write_images(tmp_path / "imgs", n=2)
    out = tmp_path / "c"
    argv = ["collect", "--data", f"folder:{tmp_path / 'imgs'}", "--out", str(out), "--quiet"]
    assert cli(capsys, *argv)[0] == 0
    info = json.loads((out / "collection.json").read_text())
    (out / "collection.json").write_text(json.dumps({**info, "complete": False}))
    parts = out / "ranks" / "rank_00000" / "parts"
    for p in parts.iterdir():
        p.unlink()
    parts.rmdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    parts.symlink_to(elsewhere)
    status, lines = cli(capsys, *argv)
    assert status == 2 and len(lines) == 1 and "symlink" in lines[0], lines
    assert list(elsewhere.iterdir()) == []


def test_disk_full_is_one_line(tmp_path, capsys, monkeypatch):
    """An OSError ENOSPC while writing a shard printed a traceback."""
    from vit_lens_clip.decompose import checkpoint

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    write_images(tmp_path / "imgs", n=2)
    monkeypatch.setattr(checkpoint, "atomic_write_bytes", full)
    status, lines = cli(capsys, "collect", "--data", f"folder:{tmp_path / 'imgs'}", "--out", str(tmp_path / "c"),
                        "--quiet")
    assert status == 2 and len(lines) == 1 and "no space left" in lines[0], lines


def test_batch_size_zero_leaves_no_folder_that_a_rerun_refuses(tmp_path, capsys):
    write_images(tmp_path / "imgs", n=2)
    out = tmp_path / "c"
    status, lines = cli(capsys, "collect", "--data", f"folder:{tmp_path / 'imgs'}", "--out", str(out), "--batch-size",
                        "0", "--quiet")
    assert status == 2 and len(lines) == 1 and not out.exists()
    assert cli(capsys, "collect", "--data", f"folder:{tmp_path / 'imgs'}", "--out", str(out), "--quiet")[0] == 0


# ------------------------------------------------------------------------------------------ readers


def test_16_bit_png_keeps_its_range(tmp_path):
    """A mode I;16 PNG went through PIL's convert("RGB"), which clips every value above 255: mid-grey became white."""
    root = tmp_path / "imgs"
    root.mkdir()
    values = np.array([[0, 16384], [32768, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(root / "deep.png")
    assert Image.open(root / "deep.png").mode == "I;16"
    data = ImageFolder(root, lambda im: torch.from_numpy(np.asarray(im).copy()))
    image = data[0]["image"][..., 0]
    assert image.tolist() == [[0, 64], [128, 255]]


def test_hidden_folders_are_not_images_or_classes(tmp_path):
    """.ipynb_checkpoints/ copies were read as images (twice the data) and, labelled, as a class."""
    write_images(tmp_path / "data" / "cat", n=2)
    write_images(tmp_path / "data" / "dog", n=1)
    write_images(tmp_path / "data" / ".ipynb_checkpoints", n=2)
    write_images(tmp_path / "data" / "cat" / ".ipynb_checkpoints", n=2)
    plain = ImageFolder(tmp_path / "data", lambda im: im)
    labelled = ImageFolder(tmp_path / "data", lambda im: im, labelled=True)
    assert len(plain) == 3 and len(labelled) == 3
    assert labelled.classes == ["cat", "dog"]


def test_a_non_utf8_file_name_is_skipped_and_listed(tmp_path, capsys):
    """A file name that is not UTF-8 aborted the run (the identity and the manifest could not encode it)."""
    root = tmp_path / "imgs"
    write_images(root, n=2)
    bad = os.path.join(os.fsencode(root), b"caf\xe9.bmp")
    with open(bad, "wb") as f:
        f.write((root / "img0.bmp").read_bytes())
    out = tmp_path / "c"
    status, lines = cli(capsys, "collect", "--data", f"folder:{root}", "--out", str(out), "--quiet")
    assert status == 0, lines
    m = manifest(out)
    assert m["n_images"] == 2 and len(m["skipped"]) == 1 and "UTF-8" in m["skipped"][0][1]


def _tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_bad_webdataset_shards_are_skipped_and_listed_and_nothing_is_written_outside(tmp_path, capsys):
    """An empty or truncated tar aborted the run, and so did a .cls that is not an integer."""
    shards = tmp_path / "shards"
    shards.mkdir()
    _tar(shards / "a.tar", {"0001.png": _png(0), "0001.cls": b"3", "0002.png": _png(1), "0002.cls": b"cat",
                            "../0003.png": _png(2), "../0003.cls": b"1", "/tmp/0004.png": _png(3),
                            "/tmp/0004.cls": b"2"})
    (shards / "b.tar").write_bytes(b"")
    _tar(shards / "c.tar", {"0005.cls": b"0", "0005.png": _png(4), "0006.cls": b"0", "0006.png": _png(5)})
    whole = (shards / "c.tar").read_bytes()
    cut = 10 * 512 + 100  # 0005 and 0006.cls whole (headers, data padded to 512); 0006.png cut short
    (shards / "c.tar").write_bytes(whole[:cut])
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    out = tmp_path / "sub" / "c"
    status, lines = cli(capsys, "collect", "--data", f"wds:{shards}", "--out", str(out), "--quiet")
    assert status == 0, lines
    m = manifest(out)
    reasons = " | ".join(r for _, r in m["skipped"])
    assert m["n_images"] == 4, m["skipped"]  # 0001, ../0003, /tmp/0004, 0005
    assert "not an integer" in reasons and "empty file" in reasons and "truncated" in reasons, reasons
    after = sorted(str(p) for p in tmp_path.rglob("*") if not str(p).startswith(str(tmp_path / "sub")))
    assert after == before and not Path("/tmp/0004.png").exists()


# ------------------------------------------------------------------------------------------ segment, memory


def test_segment_creates_no_output_folder_for_an_unusable_input(tmp_path, capsys):
    """segment created --out before it found that the dataset held no usable image/mask pair."""
    data = tmp_path / "seg"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    (data / "images" / "a.png").write_bytes(b"not an image")
    out = tmp_path / "seg_out"
    status, lines = cli(capsys, "segment", "--dataset", "folder", str(data), "--out", str(out))
    assert status == 2 and len(lines) == 1, lines
    assert not out.exists()


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, 6 * 2**30))


def test_scores_that_cannot_fit_in_memory_are_refused_in_one_line(tmp_path):
    """A 100,000-text pool: collect embedded every text, then ran out of memory (or took the machine's)."""
    pool = tmp_path / "pool.txt"
    pool.write_text("".join(f"text number {i}\n" for i in range(100_000)))
    out = tmp_path / "c"
    proc = subprocess.run([sys.executable, "-m", "vit_lens_clip", "collect", "--data", "shapes:4096", "--out", str(out),
                           "--parts", "heads,scores", "--texts", str(pool), "--quiet"], env=env(), capture_output=True,
                          text=True, timeout=120, preexec_fn=_limit_memory)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert "'scores' part" in lines[0] and "GiB" in lines[0], lines[0]
    assert not out.exists()


# ------------------------------------------------------------------------------------------ the report's folder

SECTIONS_BUT_TEXTSPAN = ["ablation", "completeness", "heatmaps", "segmentation", "spurious", "attention", "neurons",
                         "sae"]


def report_argv(out: Path, pool: Path, *extra: str, skip: tuple[str, ...] = ()) -> list[str]:
    """The smallest report that writes every kind of file (page, results, textspan.*): 4 scenes, 1 layer."""
    return ["report", "--out", str(out), "--n-images", "4", "--batch-size", "4", "--texts", str(pool), "--k", "2",
            "--last-layers", "1", "--quiet", "--skip", *SECTIONS_BUT_TEXTSPAN, *skip, *extra]


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pool") / "pool.txt"
    path.write_text("a red circle\na blue square\na green star\na small bird\na tall tree\nwater\n")
    return path


@pytest.fixture(scope="module")
def previous_report(tmp_path_factory, pool) -> Path:
    """A finished small report (made once; each test reruns into its own copy)."""
    out = tmp_path_factory.mktemp("previous") / "r"
    assert main(report_argv(out, pool)) == 0
    return out


@pytest.fixture
def rerun_folder(tmp_path, previous_report) -> Path:
    return Path(shutil.copytree(previous_report, tmp_path / "r", symlinks=True))


def snapshot(out: Path) -> dict[str, bytes]:
    """Every file of a report folder (its record too) but the lock, and every path below it."""
    return {str(p.relative_to(out)): (p.read_bytes() if p.is_file() else b"<dir>") for p in sorted(out.rglob("*"))
            if not p.name.startswith(".vit_lens_clip.lock")}


def test_a_failed_or_interrupted_rerun_leaves_the_previous_report_intact(rerun_folder, capsys, monkeypatch, pool):
    """`report --out D --overwrite` with a model that fails to load, or a rerun stopped by Ctrl-C after its
    sections, left D empty: the previous report was removed before the new one existed."""
    import vit_lens_clip.app.report as report

    out = rerun_folder
    before = snapshot(out)
    assert {"report.html", "results.json", "results.csv", "textspan.md"} <= set(before)

    def unloadable(*args, **kwargs):
        raise CorruptFileError("weights.safetensors holds NaN")

    with monkeypatch.context() as m:
        m.setattr(report, "load_clip", unloadable)
        status, lines = cli(capsys, *report_argv(out, pool, "--overwrite", "--k", "3"))
    assert status == 2 and lines == ["vit-lens-clip report: error: weights.safetensors holds NaN"], lines
    assert snapshot(out) == before

    def interrupted(ctx):
        (ctx.out / "report.html").write_text("half a page")
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(report, "_write", interrupted)
        with pytest.raises(KeyboardInterrupt):
            main(report_argv(out, pool))
    assert snapshot(out) == before


class Killed(BaseException):
    """Stands for SIGKILL: the run stops where it is and none of its own clean-up runs."""


def killed_report(monkeypatch, argv: list[str]) -> None:
    """`vit-lens-clip ARGV`, killed once every section has run (TextSpan's files written), before the page is
    written: nothing of the report's clean-up runs, the kernel only drops the folder's lock (a forked or spawned
    process would do the same at the cost of a deadlock risk or the imports; app/run_folder's unit test kills real
    processes at every step of the commit)."""
    import vit_lens_clip.app.report as report
    from vit_lens_clip.app import run_folder

    def die(ctx):
        raise Killed

    def only_the_kernel(self, *exc):
        if getattr(self, "_lock", None) is not None:
            self._lock.release()

    with monkeypatch.context() as m:
        m.setattr(report, "_write", die)
        if hasattr(run_folder, "ReportFolder"):
            m.setattr(run_folder.ReportFolder, "__exit__", only_the_kernel)
        with pytest.raises(Killed):
            main(argv)


def test_a_killed_rerun_then_skip_textspan_leaves_one_whole_report_and_nothing_stale(rerun_folder, capsys,
                                                                                      monkeypatch, pool):
    """A report killed after its TextSpan section, then `report --overwrite --skip textspan`: the killed run's
    textspan.* stayed beside the new report, counted as the user's files."""
    out = rerun_folder
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    killed_report(monkeypatch, report_argv(out, pool, "--k", "3", "--overwrite"))
    assert {k: v for k, v in snapshot(out).items() if not k.startswith(".vit_lens_clip-staging-")} == before
    # the killed run's lock does not block, its staging folder is removed, the old textspan.* do not survive
    status, lines = cli(capsys, *report_argv(out, pool, "--overwrite", skip=("textspan",)))
    assert status == 0, lines
    names = sorted(p.name for p in out.iterdir() if p.name != ".vit_lens_clip.lock")
    assert names == [".vit_lens_clip_report.json", "notes.txt", "report.html", "results.csv", "results.json"]
    record = json.loads((out / ".vit_lens_clip_report.json").read_text())
    assert record["files"] == ["report.html", "results.csv", "results.json"] and "committing" not in record
    assert json.loads((out / "results.json").read_text())["skipped_sections"]["textspan"] == "--skip"
    assert (out / "notes.txt").read_text() == "mine"


def test_a_full_disk_during_a_rerun_is_one_line_and_keeps_the_previous_report(rerun_folder, capsys, monkeypatch,
                                                                                 pool):
    """A full disk while the page was written: a traceback and a truncated report.html in place of the old one."""
    import vit_lens_clip.app.report as report

    out = rerun_folder
    before = snapshot(out)

    def full(path, *args, **kwargs):  # report.html and results.json are written; results.csv meets a full disk
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(report, "open", full, raising=False)
    status, lines = cli(capsys, *report_argv(out, pool))
    assert status == 2 and len(lines) == 1 and "no space left on the device" in lines[0], lines
    assert snapshot(out) == before


def test_the_users_files_are_replaced_only_with_overwrite_and_named(tmp_path, capsys, pool):
    """`report --out B --overwrite` overwrote the user's report.html and results.csv although the refusal message
    said "your files there are kept"."""
    out = tmp_path / "b"
    out.mkdir()
    mine = {"report.html": "my page", "results.csv": "my table", "textspan.md": "my notes", "thesis.tex": "my thesis"}
    for name, text in mine.items():
        (out / name).write_text(text)
    status, lines = cli(capsys, *report_argv(out, pool))
    assert status == 2 and len(lines) == 1, lines
    assert "would replace your report.html, results.csv, textspan.md;" in lines[0], lines[0]
    assert "thesis.tex" not in lines[0] and "your other files are kept" in lines[0]
    assert {n: (out / n).read_text() for n in mine} == mine and not any(out.glob(".vit_lens_clip-staging-*"))
    assert cli(capsys, *report_argv(out, pool, "--overwrite"))[0] == 0
    assert (out / "thesis.tex").read_text() == "my thesis" and "<html" in (out / "report.html").read_text().lower()
    assert json.loads((out / ".vit_lens_clip_report.json").read_text())["files"] == [
        "report.html", "results.csv", "results.json", "textspan.html", "textspan.json", "textspan.md"]


def test_a_second_report_on_the_same_folder_is_refused_in_one_line(tmp_path, capsys, pool):
    from vit_lens_clip.decompose.folder_lock import FolderLock

    out = tmp_path / "r"
    with FolderLock(out, "--out"):  # another process's report, writing there now
        status, lines = cli(capsys, *report_argv(out, pool))
    assert status == 2 and len(lines) == 1 and "being written by another process" in lines[0], lines
    assert not (out / "report.html").exists()


def test_the_report_never_writes_through_a_symlink_or_trusts_a_linked_record(tmp_path, rerun_folder, capsys, pool):
    """A symlinked report.html (refused even with --overwrite), a symlink where the report stages its files or
    its record's temporary (removed as links), a record that is a symlink to elsewhere (not the folder's: its
    file list would have deleted the user's notes.txt)."""
    out = rerun_folder
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "x.html").write_text("keep me")
    (out / "report.html").unlink()
    (out / "report.html").symlink_to("../precious/x.html")
    status, lines = cli(capsys, *report_argv(out, pool, "--overwrite"))
    assert status == 2 and len(lines) == 1 and "report.html is a symlink" in lines[0], lines
    (out / "report.html").unlink()
    (out / ".vit_lens_clip-staging-1").symlink_to("../precious")
    (out / ".vit_lens_clip_report.json.tmp").symlink_to("../precious/x.html")
    assert cli(capsys, *report_argv(out, pool))[0] == 0
    assert sorted(p.name for p in precious.iterdir()) == ["x.html"] and (precious / "x.html").read_text() == "keep me"
    assert not (out / ".vit_lens_clip-staging-1").is_symlink() and "<html" in (out / "report.html").read_text()
    # a record linked in from elsewhere is not this folder's record
    record = out / ".vit_lens_clip_report.json"
    shared = tmp_path / "shared.json"
    shared.write_text(json.dumps({**json.loads(record.read_text()), "files": ["notes.txt"], "sha256": {}}))
    record.unlink()
    record.symlink_to(shared)
    (out / "notes.txt").write_text("mine")
    status, lines = cli(capsys, *report_argv(out, pool))
    assert status == 2 and len(lines) == 1 and "holds no previous report" in lines[0], lines
    assert (out / "notes.txt").read_text() == "mine"


def test_a_record_listing_paths_outside_the_folder_deletes_nothing(rerun_folder, tmp_path, capsys, pool):
    """`"../victim.txt"` (or an absolute path) in the record's file list: a rerun deleted victim.txt."""
    out = rerun_folder
    record = out / ".vit_lens_clip_report.json"
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    for listed in ["../victim.txt", str(victim)]:
        record.write_text(json.dumps({**json.loads(record.read_text()), "files": ["report.html", listed]}))
        before = snapshot(out)
        for extra in ((), ("--overwrite",)):
            status, lines = cli(capsys, *report_argv(out, pool, *extra))
            assert status == 2 and len(lines) == 1 and repr(listed) in lines[0], lines
            assert victim.read_text() == "keep me" and snapshot(out) == before


# ------------------------------------------------------------------------------------------ textspan, collect_on_rank


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    """A small collection: 4 scenes, the heads, embedding and means of the last layer (what report --from reads)."""
    out = tmp_path_factory.mktemp("collection") / "c"
    assert main(["collect", "--data", "shapes:4", "--out", str(out), "--parts", "heads,embed,means", "--last-layers", "1",
                 "--batch-size", "4", "--quiet"]) == 0
    return out


def test_a_shard_with_other_finite_values_is_refused_by_textspan_and_report_from(collection, tmp_path, capsys, pool):
    """A shard's tensors overwritten with other finite values: `textspan --from C` and `report --from C` exited 0
    with other picks for every head (the manifest's sha256 was never checked by these readers)."""
    from safetensors.torch import load_file, save_file

    source = Path(shutil.copytree(collection, tmp_path / "c"))
    shard = next((source / "ranks").rglob("shard_*.safetensors"))
    save_file({k: (v + 1 if v.is_floating_point() else v) for k, v in load_file(str(shard)).items()}, str(shard))
    for argv in (["textspan", "--from", str(source), "--out", str(tmp_path / "o"), "--pool", str(pool), "--k", "2"],
                 ["report", "--from", str(source), "--out", str(tmp_path / "r"), "--texts", str(pool), "--k", "2",
                  "--quiet"]):
        status, lines = cli(capsys, *argv)
        assert status == 2 and len(lines) == 1, (argv[0], lines)
        assert str(shard) in lines[0] and "sha256" in lines[0], lines[0]
    assert not (tmp_path / "r" / "report.html").exists() and not (tmp_path / "o" / "textspan.md").exists()


def test_textspan_out_is_locked_and_never_written_through(collection, tmp_path, capsys, pool):
    """`textspan --out O` had no lock, and wrote textspan.* with plain writes: through a symlink O/textspan.md."""
    from unit.decompose.test_folder_lock import hold_in_another_process, kill

    source, out = collection, tmp_path / "o"
    argv = ["textspan", "--from", str(source), "--out", str(out), "--pool", str(pool), "--k", "2"]
    holder = hold_in_another_process(out)
    try:
        status, lines = cli(capsys, *argv)
        assert status == 2 and len(lines) == 1 and "being written by another process" in lines[0], lines
        assert sorted(p.name for p in out.iterdir()) == [".vit_lens_clip.lock"]
    finally:
        kill(holder)  # its lock goes with it
    target = tmp_path / "precious.md"
    target.write_text("keep me")
    (out / "textspan.md").symlink_to("../precious.md")
    (out / ".vit_lens_clip-staging-1").mkdir()  # left by a killed run
    assert cli(capsys, *argv)[0] == 0
    assert target.read_text() == "keep me" and not (out / "textspan.md").is_symlink()
    assert sorted(p.name for p in out.iterdir()) == [".vit_lens_clip.lock", "textspan.html", "textspan.json",
                                                     "textspan.md"]
    assert "## L5.H0" in (out / "textspan.md").read_text()


def test_collect_on_rank_called_from_python_is_locked(tmp_path):
    """The library function under `collect` took no lock: two Python processes could write one folder at once."""
    from unit.decompose.test_folder_lock import hold_in_another_process, kill

    from vit_lens_clip.datasets.folder import TensorImages
    from vit_lens_clip.decompose.folder_lock import FolderBusyError
    from vit_lens_clip.distributed.collection import CollectionPlan, collect_on_rank
    from vit_lens_clip.loading import load_clip

    loaded = load_clip("vit-lens-clip/shapes")
    images = torch.rand(3, 3, 64, 64) * 0.5
    data = TensorImages(images)
    plan, identity, out = CollectionPlan(parts=("heads",), layers=(5,), batch_size=3), {"dataset": "3"}, tmp_path / "c"
    holder = hold_in_another_process(out)
    try:
        try:
            collect_on_rank(loaded.model, data, out, plan, {**identity, "model": loaded.key}, progress=False)
            refused = ""
        except FolderBusyError as e:
            refused = str(e)
        assert "being written by another process" in refused and not (out / "collection.json").exists()
    finally:
        kill(holder)
    collect_on_rank(loaded.model, data, out, plan, {**identity, "model": loaded.key}, progress=False)
    assert json.loads((out / "manifest.json").read_text())["n_images"] == 3


# ------------------------------------------------------------------------------------------ segment, neurons


def test_segment_and_neurons_never_write_through_a_symlink_in_out(tmp_path, capsys):
    """`segment --out O` and `neurons --out O` wrote their files with plain writes: a symlink O/segmentation.md or
    O/second_order_L4.safetensors -> ../x overwrote x."""
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(root / "images" / "a.png")
    Image.new("L", (64, 64), 255).save(root / "masks" / "a.png")
    classes = tmp_path / "classes.txt"
    classes.write_text("circle\nsquare\n")
    runs = {"segmentation.md": ["segment", "--dataset", "folder", str(root), "--classes", str(classes), "--templates",
                                "simple", "--examples", "0", "--methods", "decomposition", "--out"],
            "second_order_L4.safetensors": ["neurons", "collect", "--layers", "4", "--n-reference", "4", "--quiet",
                                            "--out"]}
    for name, argv in runs.items():
        out = tmp_path / f"out-{argv[0]}"
        out.mkdir()
        target = tmp_path / f"precious-{argv[0]}"
        target.write_text("keep me")
        (out / name).symlink_to(os.path.relpath(target, out))
        status, lines = cli(capsys, *argv, str(out))
        assert status == 0, lines
        assert target.read_text() == "keep me" and (out / name).is_file() and not (out / name).is_symlink()
        assert not any(p.name.startswith(".vit_lens_clip-staging-") for p in out.iterdir())
