"""Packs: a data folder's aligned faces as small WebP files that travel to a lent machine, and
training that fits a wall-clock budget there."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.tools.data import AlignedFaces, aligned_cache, build_cache
from engine.tools.pack import PackOptions, pack_parts, write_pack
from engine.tools.train import Trainer, train
from tests.test_train import ROOT, make_cache, tiny_options


def smooth_cache(data_dir: Path, n: int = 40, size: int = 32) -> Path:
    """``make_cache``'s folder with smooth pictures (random noise is what WebP keeps worst)."""
    make_cache(data_dir, n, size)
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:size, 0:size] / size
    images = np.stack([np.stack([(np.sin(6 * xx * f[0] + f[1]) + np.cos(5 * yy * f[2])) * 60 + 120 + c * 10
                                 for c in range(3)], -1) for f in rng.uniform(0.3, 1.5, (n, 3))])
    np.save(data_dir / f"aligned-{size}" / "images.npy", images.clip(0, 255).astype(np.uint8))
    return data_dir


def test_a_pack_unpacks_to_the_same_faces_labels_and_split(tmp_path: Path) -> None:
    data = smooth_cache(tmp_path / "data")
    report = write_pack(PackOptions(data=str(data), out=str(tmp_path / "p" / "faces.npepack"), resolution=32,
                                    sets="celeba", quality=90, test=3))
    assert report["train"] == 32  # 8 of the 40 are held out; 3 of them travel
    assert report["test"] == 3
    packed = AlignedFaces(aligned_cache(tmp_path / "p" / "faces.npepack", 32))
    original = AlignedFaces(data / "aligned-32")
    where = {it["file"]: i for i, it in enumerate(original.items)}
    rows = np.array([where[it["file"]] for it in packed.items])
    assert [it for it in packed.items] == [original.items[r] for r in rows]
    assert np.array_equal(packed.labels(), original.labels(rows))
    error = np.abs(packed.images(np.arange(len(packed))).astype(float) - original.images(rows).astype(float))
    assert error.mean() < 4, error.mean()
    assert sum(it["split"] == "test" for it in packed.items) == 3


def test_a_large_pack_splits_into_parts_and_any_part_brings_the_others(tmp_path: Path) -> None:
    data = smooth_cache(tmp_path / "data", n=60)
    out = tmp_path / "p" / "faces.npepack"
    # a limit below one face's size puts every face in a part of its own
    write_pack(PackOptions(data=str(data), out=str(out), resolution=32, sets="celeba", max_mb=1.0001, test=2))
    parts = pack_parts(out)
    assert len(parts) == 50
    assert parts[0] == out
    assert parts[1].name == "faces-2.npepack"
    assert pack_parts(parts[7]) == parts
    first = json.loads((aligned_cache(parts[3], 32) / "meta.json").read_text())["items"]
    assert [it["split"] for it in first[:2]] == ["test", "test"]  # the grid faces come in the first part
    assert len(first) == 50

    # a part missing (one call brought it, the next machine is a fresh one): what is there is
    # used, and the folder is unpacked again when the part arrives
    kept = parts[1].read_bytes()
    parts[1].unlink()
    assert len(AlignedFaces(aligned_cache(out, 32))) == 49
    parts[1].write_bytes(kept)
    assert len(AlignedFaces(aligned_cache(out, 32))) == 50


def test_a_pack_trains_like_the_folder_and_checks_what_is_asked_of_it(tmp_path: Path) -> None:
    from engine.core.checkpoint import load_model

    data = make_cache(tmp_path / "data")
    pack = tmp_path / "faces.npepack"
    write_pack(PackOptions(data=str(data), out=str(pack), resolution=32, sets="celeba"))
    run = train(tiny_options(pack, tmp_path / "run"))
    assert load_model(run / "model").meta["trained_steps"] == 4
    with pytest.raises(ValueError, match="packs the sets celeba, not celeba, lfw"):
        build_cache(pack, 32, ("celeba", "lfw"))
    with pytest.raises(ValueError, match="another size than 64 px"):
        aligned_cache(pack, 64)


def test_a_later_part_alone_trains_with_its_own_faces_in_the_grids(tmp_path: Path) -> None:
    data = make_cache(tmp_path / "data")
    write_pack(PackOptions(data=str(data), out=str(tmp_path / "faces.npepack"), resolution=32, sets="celeba",
                           max_mb=1.014, test=8))  # random noise: about 900 bytes a face, 16 faces to a part
    (tmp_path / "faces.npepack").unlink()  # the part with the held-out faces
    run = train(tiny_options(tmp_path / "faces-2.npepack", tmp_path / "run", steps=2))
    assert (run / "grid-0000002.png").is_file()


def test_a_damaged_pack_or_a_bad_name_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npepack"
    bad.write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="not a readable face pack"):
        aligned_cache(bad, 32)
    data = make_cache(tmp_path / "data")
    for name in ("faces.zip", "faces-2.npepack"):
        with pytest.raises(ValueError, match="a pack's name ends in"):
            write_pack(PackOptions(data=str(data), out=str(tmp_path / name), resolution=32, sets="celeba"))


def test_minutes_fit_the_steps_to_the_time_left_and_keep_the_decay_share(tmp_path: Path) -> None:
    data = make_cache(tmp_path / "data")
    t = Trainer(tiny_options(data, tmp_path / "run", minutes=1.0, steps=10_000, lr_decay_from=6_000))
    given = (0, t.opts)
    t.step = 200
    now = time.perf_counter()
    # 30 s gone, 0.1 s a step: 60 - 30 - (10 + 1.8) s of reserve - 15 steps for the export leaves 16.7 s
    t.fit_to_minutes(now - 30.0, (100, now - 10.0), given)
    assert abs(t.opts.steps - 367) <= 1
    assert abs(t.opts.lr_decay_from - 0.6 * t.opts.steps) <= 1
    t.fit_to_minutes(now - 59.0, (100, now - 10.0), given)  # past the budget: stop here
    assert t.opts.steps == 200


def test_a_run_resumed_with_minutes_inside_its_decay_goes_on_from_the_rate_it_had(tmp_path: Path) -> None:
    """Resumed at step 6,300 of 9,700 with the decay from 4,850: fitting the steps to the minutes
    keeps the learning rate of the step it resumed at (not the full rate of a decay restarted there),
    and still ends at a tenth of it."""
    data = make_cache(tmp_path / "data")
    t = Trainer(tiny_options(data, tmp_path / "run", minutes=1.0, steps=9_700, lr_decay_from=4_850, lr=1e-3))
    t.step = 6_300
    before = t.learning_rate(t.step)
    assert before < 0.8e-3
    given = (t.step, t.opts)
    now = time.perf_counter()
    t.fit_to_minutes(now - 30.0, (6_200, now - 10.0), given)  # 0.1 s a step: about 167 steps left
    assert abs(t.opts.steps - 6_467) <= 1
    assert t.learning_rate(t.step) == pytest.approx(before, rel=1e-3)
    assert t.learning_rate(t.opts.steps) == pytest.approx(1e-4)
    assert t.learning_rate(t.step) > t.learning_rate(t.step + 80) > t.learning_rate(t.opts.steps)


def test_a_run_with_minutes_stops_in_time_and_exports(tmp_path: Path) -> None:
    from engine.core.checkpoint import load_model

    data = make_cache(tmp_path / "data")
    t0 = time.perf_counter()
    run = train(tiny_options(data, tmp_path / "run", minutes=0.2, steps=10**7, image_every=10**7,
                             checkpoint_every=10**7, export_every=10**7, log_every=10**7))
    assert time.perf_counter() - t0 < 20
    logs = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    fitted = [r["fitted_steps"] for r in logs if "fitted_steps" in r]
    assert fitted
    assert fitted[-1] < 10**7
    state = json.loads((run / "state.json").read_text())
    assert state["step"] == fitted[-1] == state["options"]["steps"]
    assert load_model(run / "model").meta["trained_steps"] == fitted[-1]
    assert [p.name for p in run.glob("grid-*.png")] == [f"grid-{fitted[-1]:07d}.png"]  # the last step's grid


def test_half_precision_weights_load_as_they_are(tmp_path: Path, tiny_model_dir: Path) -> None:
    """The lent GPU returns a run's weights in half precision (gpu_train.sh): the loader takes them."""
    from safetensors.torch import load_file, save_file

    from engine.core.checkpoint import load_model

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    full = load_model(folder)
    tensors = load_file(str(folder / "model.safetensors"))
    halved = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
    save_file(halved, str(folder / "model.safetensors"))
    half = load_model(folder)
    z = torch.randn(2, full.config.latent_dim)
    assert half.model.decoder(z).dtype == torch.float32
    assert torch.allclose(half.model.decoder(z), full.model.decoder(z), atol=2e-2)


@pytest.mark.slow
def test_the_gpu_script_trains_each_recipe_and_returns_weights_and_logs(tmp_path: Path) -> None:
    """engine/tools/gpu_train.sh as the lent machine runs it (here on the CPU, a tiny model)."""
    from engine.core.checkpoint import load_model

    work = tmp_path / "repo"
    (work / ".pack").mkdir(parents=True)
    write_pack(PackOptions(data=str(make_cache(tmp_path / "data")), out=str(work / ".pack" / "faces.npepack"),
                           resolution=32, sets="celeba"))
    tiny = ("--resolution 32 --latent-dim 16 --decoder-channels 16,12,8,8 --encoder-channels 4,8,8 "
            "--discriminator-channels 4,8,8 --batch-size 8 --sets celeba --device cpu --image-every 5")
    (work / "recipes.txt").write_text(f"# two runs\nsmall {tiny}\n\nsmall-lr {tiny} --lr 1e-3\n")
    out, store = tmp_path / "out", tmp_path / "store"
    env = {**os.environ, "OUT": str(out), "PYTHONPATH": str(ROOT), "NPE_STORE": str(store),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    r = subprocess.run(["bash", str(ROOT / "engine" / "tools" / "gpu_train.sh"), "0.2", "recipes.txt"], cwd=work,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["runs.tar", "small-lr.safetensors", "small.safetensors"]
    runs = tmp_path / "runs"
    runs.mkdir()
    with tarfile.open(out / "runs.tar") as tar:
        tar.extractall(runs, filter="data")
    for name in ("small", "small-lr"):
        (out / f"{name}.safetensors").rename(runs / name / "model" / "model.safetensors")
        assert load_model(runs / name / "model").config.resolution == 32
        assert (runs / name / "log.jsonl").is_file()
        assert list((runs / name).glob("grid-*.png"))


def test_packing_again_replaces_its_own_parts_and_leaves_other_packs(tmp_path: Path) -> None:
    data = make_cache(tmp_path / "data")
    out = tmp_path / "faces.npepack"
    write_pack(PackOptions(data=str(data), out=str(out), resolution=32, sets="celeba", max_mb=1.014))
    assert len(pack_parts(out)) >= 3
    other = tmp_path / "faces-other-3.npepack"  # another pack whose name only looks like a part
    other.write_bytes(b"kept")
    write_pack(PackOptions(data=str(data), out=str(out), resolution=32, sets="celeba"))
    assert pack_parts(out) == [out]
    assert other.read_bytes() == b"kept"
