"""Dataset-scale collection on torch.distributed: torchrun with 2 gloo ranks (1 thread each) on the embedded model
over an odd-sized shapes dataset equals one process; a SIGKILLed rank resumes to the same result; bad folders
get one-line errors. Every collection here also keeps dataset examples (``--examples``) of heads, the neurons of
one layer and the shipped SAE's features, so the same launches check their merge and resume."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from contextlib import redirect_stderr
from pathlib import Path

import pytest
import torch
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
from PIL import Image
from safetensors.torch import load_file, save_file

from vit_lens_clip.app.cli import main
from vit_lens_clip.app.collect import example_units, profile_collection
from vit_lens_clip.datasets.folder import ImageFolder
from vit_lens_clip.datasets.sources import ShapesItems, open_dataset
from vit_lens_clip.decompose.reducers import MeanReducer, StackReducer, run_reducers
from vit_lens_clip.decompose.store import StoredParts
from vit_lens_clip.distributed.collection import (
    CollectionPlan,
    collect_on_rank,
    merge_collection,
    rank_dir,
)
from vit_lens_clip.distributed.sampler import ContiguousSampler, rank_range
from vit_lens_clip.loading import load_clip
from vit_lens_clip.methods.ablation import ablate_posthoc
from vit_lens_clip.methods.examples import TopExamples, brute_force_top
from vit_lens_clip.methods.sae.shipped import load_shipped_sae
from vit_lens_clip.methods.textspan.runs import collect_head_contributions, run_textspan

N, BATCH = 41, 7  # odd size; 7 divides both ranks' blocks (21, 20 → batches 7,7,7 | 7,7,6), so batches match
ROOT = Path(__file__).resolve().parents[2]
KEYS = ["heads", "embed", "embedding", "indices"]
EXAMPLES, UNITS = 3, "heads,neurons:3,sae"
POOL = [f"{c} {s}" for c in ("a red", "a blue", "a green", "a small", "a large", "two") for s in
        ("circle", "square", "triangle", "star", "shape on grass", "bird")]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def torchrun(*args: str, nproc: int = 2, check: bool = True, **kw) -> subprocess.Popen | subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]
    if not check:
        return subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)
    run = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=600, check=False, **kw)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run


def collect_args(out: Path) -> list[str]:
    return ["collect", "--data", f"shapes:{N}", "--out", str(out), "--batch-size", str(BATCH), "--threads", "1",
            "--checkpoint-every", "1", "--examples", str(EXAMPLES), "--example-units", UNITS, "--quiet"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The ranks run with --threads 1, so the in-process references do too: CPU kernels' rounding depends on the
    thread count, and the comparisons below are bitwise."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def loaded():
    return load_clip()


@pytest.fixture(scope="module")
def dataset(loaded):
    return ShapesItems(N, loaded.preprocess)


@pytest.fixture(scope="module")
def pool_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("pool") / "pool.txt"
    path.write_text("\n".join(POOL))
    return path


def identity(loaded, fingerprint: str) -> dict:
    return {"model": loaded.key, "load": [loaded.name, None, "fp32"], "dataset": fingerprint}


@pytest.fixture(scope="module")
def single(loaded, dataset, tmp_path_factory):
    """The collection by one process (in-process, no torchrun)."""
    out = tmp_path_factory.mktemp("single")
    plan = CollectionPlan(layers=(2, 3, 4, 5), batch_size=BATCH, examples=EXAMPLES, example_units=UNITS)
    collect_on_rank(loaded.model, dataset, out, plan, identity(loaded, f"shapes:n={N},seed=0"), progress=False,
                    examples=TopExamples(example_units(loaded.model, UNITS, plan.layers), EXAMPLES))
    return out


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, pool_file):
    """`torchrun --nproc-per-node 2 -m vit_lens_clip collect`, then `textspan --from` on 2 ranks."""
    out = tmp_path_factory.mktemp("two") / "c"
    torchrun("-m", "vit_lens_clip", *collect_args(out))
    torchrun("-m", "vit_lens_clip", "textspan", "--from", str(out), "--pool", str(pool_file), "--k", "5",
             "--cache-dir", str(out.parent / "cache"))
    return out


def test_rank_range_neither_drops_nor_duplicates():
    for n in range(23):
        for world in range(1, 6):
            blocks = [rank_range(n, world, r) for r in range(world)]
            assert [i for b in blocks for i in b] == list(range(n))
            assert max(map(len, blocks)) - min(map(len, blocks)) <= 1
            assert list(ContiguousSampler(n, world, world - 1)) == list(blocks[-1])
    with pytest.raises(ValueError, match="not in a world"):
        rank_range(5, 2, 2)


def test_mean_reducer_merge_from_equals_one_pass(loaded, dataset):
    whole, halves = MeanReducer(), [MeanReducer(), MeanReducer()]
    run_reducers(loaded.model, torch.utils.data.Subset(dataset, range(12)), [whole], batch_size=4, progress=False)
    for r, m in enumerate(halves):
        run_reducers(loaded.model, torch.utils.data.Subset(dataset, rank_range(12, 2, r)), [m], batch_size=4,
                     progress=False)
    merged = MeanReducer()
    merged.merge_from([m.state_dict() for m in halves])
    assert merged.count == 12
    for k, v in whole.result().items():
        assert torch.allclose(merged.result()[k], v, rtol=1e-6, atol=1e-7), k


def test_single_process_collection_equals_collect_head_contributions(loaded, dataset, single):
    reference = collect_head_contributions(loaded, dataset, last_n_layers=4, batch_size=BATCH, progress=False)
    got = StoredParts(single).contributions()
    for k in ("heads", "embed", "embedding", "indices"):
        assert torch.equal(getattr(got, k), getattr(reference, k)), k
    for k, v in reference.means.items():
        assert torch.equal(got.means[k], v), k


def test_two_ranks_equal_one_process(loaded, dataset, single, two_ranks):
    a, b = StoredParts(single).read(KEYS), StoredParts(two_ranks).read(KEYS)
    assert torch.equal(b["indices"], torch.arange(N))  # dataset order, nothing dropped or repeated
    for k in KEYS:
        assert torch.equal(a[k], b[k]), k  # same batch shapes: bitwise
    runs = [json.loads((rank_dir(two_ranks, r) / "run.json").read_text()) for r in (0, 1)]
    assert [r["range"] for r in runs] == [[0, 21], [21, 41]]
    ma, mb = load_file(str(single / "means.safetensors")), load_file(str(two_ranks / "means.safetensors"))
    for k in ma:
        assert ((ma[k] - mb[k]).abs().max() / ma[k].abs().max()).item() <= 1e-6, k
    one, two = StoredParts(single).examples(), StoredParts(two_ranks).examples()
    assert one["names"] == two["names"] and len(one["names"]) == 16 + 512 + 1024
    assert torch.equal(one["top_indices"], two["top_indices"])  # the same images, ties by image index
    assert (one["top_scores"] - two["top_scores"]).abs().max().item() <= 1e-6
    # batch 8 does not align with the ranks' blocks: equal to 1e-6 relative
    c8 = collect_head_contributions(loaded, dataset, last_n_layers=4, batch_size=8, progress=False)
    for k in ("heads", "embed", "embedding"):
        x, y = getattr(c8, k), b[k]
        assert ((x - y).abs().max() / y.abs().max()).item() <= 1e-6, k


def test_textspan_from_two_ranks_picks_as_one_process(loaded, dataset, single, two_ranks, pool_file):
    emb = loaded.encode_text(POOL)
    rows = run_textspan(StoredParts(single).contributions(), emb, POOL, k=5)
    table = json.loads((two_ranks / "textspan" / "textspan.json").read_text())
    got = {(h["layer"], h["head_index"]): [p["index"] for p in h["picks"]] for h in table["heads"]}
    assert len(got) == len(rows) == 16
    for key, row in rows.items():
        assert got[key] == row.indices.tolist(), key


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 400) -> None:
    start = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert time.time() - start < timeout, f"{path} did not appear"
        time.sleep(0.05)


def test_sigkilled_rank_resumes_to_the_uninterrupted_result(two_ranks, tmp_path):
    out = tmp_path / "killed"
    worker = str(ROOT / "tests" / "integration" / "collect_worker.py")
    proc = torchrun(worker, "0.4", *collect_args(out), check=False)
    _wait_for(rank_dir(out, 1) / "checkpoint" / "progress.json", proc)  # rank 1 has checkpointed a batch
    pid = int((tmp_path / "killed.pids" / "1").read_text())
    assert not (rank_dir(out, 1) / "run.json").exists()  # killed mid-run, not after it
    os.kill(pid, signal.SIGKILL)
    assert proc.wait(timeout=120) != 0
    assert not (out / "manifest.json").exists()
    torchrun(worker, "0", *collect_args(out))
    resumed = json.loads((rank_dir(out, 1) / "run.json").read_text())["resumed_from"]
    assert 0 < resumed < 20
    a, b = StoredParts(two_ranks).read(KEYS), StoredParts(out).read(KEYS)
    for k in KEYS:
        assert torch.equal(a[k], b[k]), k
    ma, mb = load_file(str(two_ranks / "means.safetensors")), load_file(str(out / "means.safetensors"))
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    ea, eb = StoredParts(two_ranks).examples(), StoredParts(out).examples()
    assert ea["names"] == eb["names"] and all(torch.equal(ea[k], eb[k]) for k in ("top_scores", "top_indices"))


def test_collected_examples_equal_brute_force_top_k_on_stored_scores(loaded, dataset, single, tmp_path):
    """The examples kept during the pass are the brute-force top-k of every unit's score over all images: heads'
    from the stored parts (share ĉ·y/‖y‖² of each image's normalised embedding), neurons' and SAE features' from
    the activations recomputed here (max over tokens)."""
    got = StoredParts(single).examples()
    stored = StoredParts(single).read(["heads", "embedding", "indices"])
    y = torch.nn.functional.normalize(stored["embedding"].double(), dim=-1)
    heads = torch.einsum("nlhd,nd->nlh", stored["heads"].double(), y).reshape(N, -1)
    images = torch.stack([dataset[i]["image"] for i in range(N)])
    sae = load_shipped_sae()
    _, cache = loaded.model.run_with_cache(images, names_filter=lambda n: n in ("blocks.3.mlp.hook_post", sae.cfg.hook_name))
    neurons = cache["blocks.3.mlp.hook_post"].amax(1).double()
    with torch.no_grad():
        features = sae.encode(cache[sae.cfg.hook_name]).amax(1).double()
    values, indices = brute_force_top(torch.cat([heads, neurons, features], 1), stored["indices"], EXAMPLES)
    assert got["names"][:17] == [f"L{l}H{h}" for l in (2, 3, 4, 5) for h in range(4)] + ["L3N0"]
    same = (got["top_indices"] == indices).all(1)
    assert same.float().mean() >= 0.99, same.float().mean()  # a near-tie may flip under other batch shapes
    assert (got["top_scores"] - values).abs().max().item() <= 1e-5
    assert torch.equal(got["top_indices"][:16], indices[:16])  # heads: from the very stored numbers
    damaged = tmp_path / "damaged"
    shutil.copytree(single, damaged)
    data = bytearray((damaged / "examples.safetensors").read_bytes())
    data[-1] ^= 1  # one bit of a score
    (damaged / "examples.safetensors").write_bytes(bytes(data))
    with pytest.raises(Exception, match="sha256"):
        StoredParts(damaged).examples()


def _one_line_error(call) -> str:
    with pytest.raises(ValueError) as e:
        call()
    assert "\n" not in str(e.value)
    return str(e.value)


def test_bad_folders_get_one_line_errors(loaded, dataset, single, two_ranks, tmp_path):
    plan = CollectionPlan(layers=(2, 3, 4, 5), batch_size=BATCH)
    run = lambda out, ident: collect_on_rank(loaded.model, dataset, out, plan, ident, progress=False)
    msg = _one_line_error(lambda: run(single, identity(loaded, f"shapes:n={N},seed=1")))
    assert "different dataset" in msg
    msg = _one_line_error(lambda: run(single, {**identity(loaded, f"shapes:n={N},seed=0"), "model": "other|x|fp32"}))
    assert "different model" in msg
    # an unfinished folder of 2 ranks relaunched with 1
    unfinished = tmp_path / "unfinished"
    shutil.copytree(two_ranks, unfinished)
    meta = json.loads((unfinished / "collection.json").read_text())
    (unfinished / "collection.json").write_text(json.dumps({**meta, "complete": False}))
    msg = _one_line_error(lambda: run(unfinished, meta["identity"]))
    assert "unfinished collection by 2 ranks" in msg and "--nproc-per-node 2" in msg
    # a rank's shards missing at merge
    shard = rank_dir(unfinished, 1) / "parts" / "shard_00000.safetensors"
    shard.unlink()
    msg = _one_line_error(lambda: merge_collection(unfinished))
    assert "rank 1's shards are missing" in msg
    # the CLI prints one line and exits 2
    err = io.StringIO()
    with redirect_stderr(err):
        rc = main(["collect", "--data", f"shapes:{N}", "--seed", "3", "--out", str(single), "--quiet"])
    assert rc == 2 and err.getvalue().count("\n") == 1 and "different dataset" in err.getvalue()


def test_merge_refuses_a_rank_folder_of_another_collection(single, tmp_path):
    mixed = tmp_path / "mixed"
    shutil.copytree(single, mixed)
    merge_collection(mixed)  # the copy itself merges
    parts = rank_dir(mixed, 0) / "parts" / "manifest.json"
    manifest = json.loads(parts.read_text())
    assert manifest["identity"] == json.loads((mixed / "collection.json").read_text())["identity"]
    manifest["identity"]["dataset"] = f"shapes:n={N},seed=5"  # shards left by a collection of other images
    parts.write_text(json.dumps(manifest))
    msg = _one_line_error(lambda: merge_collection(mixed))
    assert "rank 0's shards" in msg and "another collection" in msg


def test_webdataset_shards_read_like_an_image_folder(loaded, tmp_path):
    folder = tmp_path / "imgs" / "c"
    folder.mkdir(parents=True)
    tar_path = tmp_path / "shard-000.tar"
    with tarfile.open(tar_path, "w") as tar:
        for i in range(3):
            image = Image.fromarray((torch.rand(20, 24, 3) * 255).byte().numpy())
            image.save(folder / f"s{i}.png")
            for name, data in ((f"s{i}.png", (folder / f"s{i}.png").read_bytes()), (f"s{i}.cls", str(i % 2).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    wds, fp = open_dataset(f"wds:{tar_path}", loaded.preprocess)
    ref = ImageFolder(folder.parent, loaded.preprocess)
    assert len(wds) == 3 and fp.startswith("wds:n=3")
    for i in range(3):
        assert torch.equal(wds[i]["image"], ref[i]["image"]) and wds[i]["label"] == i % 2
    with pytest.raises(ValueError, match="unknown dataset kind"):
        open_dataset("lmdb:/x", loaded.preprocess)


def test_profile_prints_the_ratio(loaded, dataset):
    plan = CollectionPlan(layers=(2, 3, 4, 5), batch_size=4)
    text = profile_collection(loaded, torch.utils.data.Subset(dataset, range(8)), plan, repeats=1)
    assert "plain encode_image" in text and "x of plain" in text


def test_imagenet_val_layout_gets_open_clip_class_names(loaded, tmp_path):
    image = Image.new("RGB", (8, 8), (10, 200, 30))
    for i in range(1000):
        (tmp_path / f"n{i:08d}").mkdir()
    for i in (0, 999):
        image.save(tmp_path / f"n{i:08d}" / "a.png")
    with pytest.raises(ValueError, match="has 2 class folders"):
        open_dataset(f"imagenet-val:{tmp_path}", loaded.preprocess)
    for i in range(1, 999):
        image.save(tmp_path / f"n{i:08d}" / "a.png")
    data, fp = open_dataset(f"imagenet-val:{tmp_path}", loaded.preprocess)
    assert data.classes == list(IMAGENET_CLASSNAMES) and data.wordnet_ids[999] == "n00000999"
    assert data[999]["label"] == 999 and fp.startswith("imagenet-val:")


def test_ablation_reads_a_collection_folder(loaded, dataset, tmp_path):
    subset = torch.utils.data.Subset(dataset, range(9))
    plan = CollectionPlan(parts=("heads", "embed", "layers", "mlps", "means"), layers=(4, 5), batch_size=4)
    collect_on_rank(loaded.model, subset, tmp_path, plan, identity(loaded, "first 9"), progress=False)
    parts, means, _ = StoredParts(tmp_path).decomposition()
    stack, ref_means = StackReducer(), MeanReducer()
    run_reducers(loaded.model, subset, [stack, ref_means], batch_size=4, layers=[4, 5], normalize=True, progress=False)
    rows = stack.result()
    for k in ("embed", "attns", "mlps", "heads", "embedding"):
        assert torch.equal(getattr(parts, k), rows[k]), k
    ablated = ablate_posthoc(parts, means, attn_layers=[0, 1], mlp_layers=[2], heads=[(5, 1)])
    want = rows["embed"] + rows["attns"].sum(1) + rows["mlps"].sum(1)
    r = ref_means.result()
    want = want - rows["attns"][:, :2].sum(1) + r["attns"][:2].sum(0) - rows["mlps"][:, 2] + r["mlps"][2]
    want = want - rows["heads"][:, 1, 1] + r["heads"][1, 1]
    assert torch.allclose(ablated, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="lacks parts"):
        StoredParts(_only_heads(loaded, subset, tmp_path / "h")).decomposition()


def _only_heads(loaded, subset, out):
    plan = CollectionPlan(parts=("heads",), layers=(5,), batch_size=4)
    return collect_on_rank(loaded.model, subset, out, plan, identity(loaded, "first 9"), progress=False)


def test_autocast_bf16_and_fp16_storage(loaded, dataset, tmp_path):
    subset = torch.utils.data.Subset(dataset, range(8))
    got = {}
    for autocast in (None, "bf16"):
        plan = CollectionPlan(parts=("heads",), layers=(4, 5), batch_size=4, autocast=autocast, store_dtype="fp16")
        out = collect_on_rank(loaded.model, subset, tmp_path / str(autocast), plan, identity(loaded, "first 8"),
                              progress=False)
        got[autocast] = StoredParts(out).read(["heads", "embedding"])
    assert got["bf16"]["heads"].dtype == torch.float16 and got["bf16"]["embedding"].dtype == torch.float32
    for k in ("heads", "embedding"):
        a, b = got[None][k].float(), got["bf16"][k].float()
        err = ((a - b).abs().max() / a.abs().max()).item()
        assert 0 < err < 2e-2, (k, err)  # bf16 changed the numbers, within bf16's precision


def test_read_parts_refuses_unfinished_folders_and_keys_missing_from_some_shards(tmp_path):
    """Rows of a key stored in only some shards would no longer line up with the others' rows."""
    save_file({"heads": torch.zeros(2, 3), "labels": torch.tensor([0, 1])}, str(tmp_path / "a.safetensors"))
    save_file({"heads": torch.ones(2, 3)}, str(tmp_path / "b.safetensors"))
    manifest = {"layers": [0], "shards": [{"file": "a.safetensors"}, {"file": "b.safetensors"}], "complete": True}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert torch.equal(StoredParts(tmp_path).read(["heads"])["heads"], torch.cat([torch.zeros(2, 3), torch.ones(2, 3)]))
    with pytest.raises(ValueError, match="labels is stored in only 1 of the 2 shards"):
        StoredParts(tmp_path).read(["heads", "labels"])
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    with pytest.raises(ValueError, match="unfinished"):
        StoredParts(tmp_path).read(["heads"])
