"""Training: options saved, exact resume, and two-process DistributedDataParallel on gloo."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from engine.core.model import FaceModel, ModelConfig
from engine.tools.data import CACHE_VERSION
from engine.tools.train import TrainOptions, train
from tests.conftest import TINY

# `npe train` flags for a network and run as small as the tests' own
TINY_FLAGS = ["--resolution", "32", "--latent-dim", "16", "--decoder-channels", "16,12,8,8", "--encoder-channels",
              "4,8,8", "--discriminator-channels", "4,8,8", "--sets", "celeba", "--batch-size", "8", "--log-every", "1",
              "--image-every", "2", "--checkpoint-every", "2", "--export-every", "4", "--adv-ramp-steps", "2",
              "--device", "cpu"]

ROOT = Path(__file__).resolve().parent.parent


def make_cache(data_dir: Path, n: int = 40, size: int = 32) -> Path:
    """A tiny aligned cache, as ``build_cache`` would write it."""
    out = data_dir / f"aligned-{size}"
    out.mkdir(parents=True)
    rng = np.random.default_rng(0)
    np.save(out / "images.npy", rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8))
    np.save(out / "labels.npy", rng.choice(np.array([-1, 1], np.int8), (n, 2)))
    items = [{"set": "celeba", "file": f"{i}.jpg", "identity": f"p{i}", "split": "test" if i % 5 == 0 else "train",
              "age": -1, "gender": -1} for i in range(n)]
    meta = {"version": CACHE_VERSION, "sets": ["celeba"], "resolution": size, "attribute_names": ["A", "B"],
            "items": items}
    (out / "meta.json").write_text(json.dumps(meta))
    return data_dir


def tiny_options(data: Path, out: Path, **kw: object) -> TrainOptions:
    base = dict(data=str(data), out=str(out), model=TINY, batch_size=8, steps=4, log_every=1,
                image_every=2, checkpoint_every=2, export_every=4, adv_ramp_steps=2, sets="celeba")
    base.update(kw)
    return TrainOptions(**base)  # type: ignore[arg-type]


def test_training_writes_options_grids_and_a_loadable_model(tmp_path: Path) -> None:
    from engine.core.checkpoint import load_model

    data = make_cache(tmp_path / "data")
    out = train(tiny_options(data, tmp_path / "run"))
    opts = json.loads((out / "options.json").read_text())
    assert opts["steps"] == 4
    assert opts["model"]["resolution"] == 32
    assert (out / "grid-0000002.png").exists()
    logs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(logs) == 4
    assert all(np.isfinite(v) for row in logs for v in row.values())
    loaded = load_model(out / "model")
    assert loaded.config.latent_dim == 16
    assert loaded.meta["trained_steps"] == 4


def test_resume_is_exact(tmp_path: Path) -> None:
    data = make_cache(tmp_path / "data")
    straight = train(tiny_options(data, tmp_path / "a", steps=4))
    train(tiny_options(data, tmp_path / "b", steps=2))
    resumed = train(tiny_options(data, tmp_path / "b", steps=4, resume=True))
    a = load_file(str(straight / "state.safetensors"))
    b = load_file(str(resumed / "state.safetensors"))
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]


@pytest.mark.slow
def test_two_processes_with_gloo(tmp_path: Path) -> None:
    data = make_cache(tmp_path / "data")
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
           "-m", "engine.tools.cli", "train", "--data", str(data), "--out", str(out), "--resolution", "32",
           "--latent-dim", "16", "--decoder-channels", "16,12,8,8", "--encoder-channels", "4,8,8",
           "--discriminator-channels", "4,8,8", "--sets", "celeba", "--batch-size", "8", "--steps", "3",
           "--device", "cpu", "--threads", "1", "--checkpoint-every", "3", "--export-every", "3"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    state = json.loads((out / "state.json").read_text())
    assert state["step"] == 3
    assert (out / "model" / "model.safetensors").exists()


def test_too_little_data_is_a_clear_error(tmp_path: Path) -> None:
    data = make_cache(tmp_path / "data", n=6)
    with pytest.raises(ValueError, match="training images"):
        train(tiny_options(data, tmp_path / "run", batch_size=8))


def test_batchnorm_recalibration_measures_the_models_own_statistics() -> None:
    from engine.tools.train import recalibrate_batchnorm
    from tests.conftest import make_tiny_model

    model = make_tiny_model(1)
    x = torch.rand(8, 3, 32, 32) * 2 - 1
    recalibrate_batchnorm(model, lambda: x, n=3)
    assert not model.training
    bn = model.encoder.down[0][1]
    with torch.no_grad():
        h = model.encoder.down[0][0](model.encoder.stem(x))
    assert torch.allclose(bn.running_mean, h.mean(dim=(0, 2, 3)), atol=1e-5)
    assert bn.momentum == 0.1


def test_export_run_writes_a_loadable_averaged_model(tmp_path: Path) -> None:
    from engine.core.checkpoint import load_model
    from engine.tools.train import export_run

    data = make_cache(tmp_path / "data")
    run = train(tiny_options(data, tmp_path / "run", steps=2))
    loaded = load_model(export_run(run, tmp_path / "exported"))
    assert loaded.model_id == "run-2"
    assert load_model(export_run(run, tmp_path / "live", which="model")).model_id == "run-2-live"


def test_learning_rate_decays_linearly_to_a_tenth(tmp_path: Path) -> None:
    from engine.tools.train import Trainer

    t = Trainer(tiny_options(tmp_path, tmp_path / "run", steps=100, lr=1e-3, lr_decay_from=50))
    assert t.learning_rate(10) == pytest.approx(1e-3)
    assert t.learning_rate(75) == pytest.approx(1e-3 * 0.55)
    assert t.learning_rate(100) == pytest.approx(1e-4)


def test_npe_export_writes_a_runs_live_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from engine.core.checkpoint import load_model
    from engine.tools.cli import main

    data = make_cache(tmp_path / "data")
    run = train(tiny_options(data, tmp_path / "run", steps=2))
    assert main(["export", str(run), "--out", str(tmp_path / "shipped"), "--live"]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == str(tmp_path / "shipped")
    loaded = load_model(tmp_path / "shipped")
    assert loaded.model_id == "run-2-live"
    assert loaded.config == TINY


def test_options_of_older_runs_still_read() -> None:
    """Runs saved before the network had its own entry kept it flat, as comma strings."""
    old = {"data": "d", "out": "o", "resolution": 32, "latent_dim": 16, "decoder_channels": "16,12,8,8",
           "encoder_channels": "4,8,8", "discriminator_channels": "4,8,8", "steps": 9, "unknown_option": 1}
    opts = TrainOptions.from_dict(old)
    assert opts.model == TINY
    assert opts.steps == 9
    assert TrainOptions.from_dict(opts.to_dict()) == opts


CONDITIONED = dataclasses.replace(TINY, attributes=("A", "B"))


def test_a_conditioned_decoder_grown_from_a_plain_one_starts_as_it(tmp_path: Path, tiny_model_dir: Path) -> None:
    from engine.core.checkpoint import load_model
    from engine.tools.train import Trainer

    t = Trainer(tiny_options(tmp_path, tmp_path / "run", model=CONDITIONED, init_from=str(tiny_model_dir)))
    # in the trainer's memory layout: channels-last and contiguous convolutions differ in the last
    # bits on some CPUs (1.9e-6 on an AVX2-only EPYC)
    plain = load_model(tiny_model_dir).model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    grown = t.model.eval()
    z = torch.randn(4, TINY.latent_dim)
    a = torch.tensor([[1.0, -1.0], [-1.0, 1.0], [0.0, 0.0], [1.0, 1.0]])
    with torch.no_grad():
        assert torch.allclose(grown.decoder(z, a), plain.decoder(z), atol=1e-6)
    assert all(torch.equal(grown.state_dict()[k], v) for k, v in plain.state_dict().items())


def test_conditioned_training_learns_what_the_attributes_mean(tmp_path: Path) -> None:
    """AttGAN-style: reconstruct with the true labels; the classifier must read turned labels
    on the edits. After a few steps the decoder's output depends on a, and the exported model
    says which attributes it takes."""
    from engine.core.checkpoint import load_model
    from engine.tools.cli import main

    data = make_cache(tmp_path / "data")
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(run), "--resolution", "32", "--latent-dim", "16",
                 "--decoder-channels", "16,12,8,8", "--encoder-channels", "4,8,8", "--discriminator-channels",
                 "4,8,8", "--attributes", "A,B", "--sets", "celeba", "--batch-size", "8", "--steps", "6",
                 "--log-every", "1", "--image-every", "6", "--checkpoint-every", "6", "--export-every", "6",
                 "--adv-ramp-steps", "1", "--lr", "0.002", "--ema", "0", "--device", "cpu"]) == 0
    logs = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(row[k]) for row in logs for k in ("cls_g", "cls_d", "edit_read"))
    loaded = load_model(run / "model")
    assert loaded.config.attributes == ("A", "B")
    z = torch.randn(2, 16)
    with torch.no_grad():
        on = loaded.model.decoder(z, torch.tensor([[1.0, 1.0], [1.0, 1.0]]))
        off = loaded.model.decoder(z, torch.tensor([[-1.0, -1.0], [-1.0, -1.0]]))
    assert (on - off).abs().mean() > 1e-4
    assert (run / "grid-0000006.png").exists()


SHORTCUT = dataclasses.replace(CONDITIONED, shortcut=8)


def test_a_shortcut_must_join_maps_the_encoder_and_decoder_both_have() -> None:
    assert TINY.shortcut_resolutions() == (16, 8)
    for wrong in (32, 4, 12):
        with pytest.raises(ValueError, match="shortcut"):
            dataclasses.replace(TINY, shortcut=wrong)


def test_a_decoder_grown_with_a_shortcut_starts_as_it_was(tmp_path: Path, tiny_model_dir: Path) -> None:
    """The shortcut's layer starts at zero: grown from a model without one, the decoder draws
    the same reconstructions with the photo's feature map as the old model did."""
    from engine.core.checkpoint import load_model
    from engine.tools.train import Trainer

    t = Trainer(tiny_options(tmp_path, tmp_path / "run", model=SHORTCUT, init_from=str(tiny_model_dir)))
    plain = load_model(tiny_model_dir).model
    grown = t.model.eval()
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        encoded = grown.encoder(x)
        assert encoded.shortcut is not None
        assert encoded.shortcut.shape == (3, 8, 8, 8)  # the encoder's 8-px map
        assert torch.allclose(grown.reconstruct(x), plain.decode(plain.encode(x)), atol=1e-6)


@pytest.mark.parametrize("drop", [0.0, 1.0])
def test_training_with_a_shortcut_makes_reconstructions_use_the_photos_map(tmp_path: Path, drop: float) -> None:
    """After a few steps the shortcut carries the photo to its reconstruction (the decoder's
    output changes when the map is left out), and the exported model keeps its shortcut. With
    every map dropped (shortcut_drop 1) the decoder never sees one, and its layer stays at zero."""
    from engine.core.checkpoint import load_model

    data = make_cache(tmp_path / "data")
    out = train(tiny_options(data, tmp_path / "run", model=SHORTCUT, steps=6, lr=0.002, ema=0.0,
                             shortcut_drop=drop))
    loaded = load_model(out / "model")
    assert loaded.config.shortcut == 8
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        mu, _, attrs, shortcut = loaded.model.encoder(x)
        assert attrs is not None
        a = torch.tanh(attrs)
        with_map = loaded.model.decode(mu, a, shortcut)
        without = loaded.model.decode(mu, a)
    if drop == 0.0:
        assert (with_map - without).abs().mean() > 1e-3
    else:
        assert torch.equal(with_map, without)


@pytest.mark.parametrize("without", [False, True])
def test_a_conditioned_models_edits_get_the_map_the_option_says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                without: bool) -> None:
    """photo_maps: reconstructions get the photos' maps, samples none, and edits the
    reconstructions' maps or, with edits_without_map (as a set slider decodes), none; the
    training step passes the option on."""
    from engine.tools import train as train_module
    from engine.tools.train import photo_maps

    g = torch.Generator().manual_seed(0)
    maps = torch.rand(4, 8, 8, 8) + 0.1
    out = photo_maps(maps, 0.0, g, edits=True, edits_without_map=without)
    assert out.shape == (12, 8, 8, 8)
    assert torch.equal(out[:4], maps)
    assert not out[4:8].any()
    assert (not out[8:].any()) if without else torch.equal(out[8:], maps)
    seen: list[torch.Tensor] = []

    def spy(*args: object, **kwargs: object) -> torch.Tensor:
        seen.append(photo_maps(*args, **kwargs))  # type: ignore[arg-type]
        return seen[-1]
    monkeypatch.setattr(train_module, "photo_maps", spy)
    data = make_cache(tmp_path / "data")
    train(tiny_options(data, tmp_path / "run", model=SHORTCUT, steps=1, edits_without_map=without))
    n = len(seen[0]) // 3
    assert seen[0][:n].any()
    assert (not seen[0][2 * n:].any()) if without else torch.equal(seen[0][2 * n:], seen[0][:n])


def test_training_keeps_random_parts_of_the_photos_map() -> None:
    """kept_regions: with shortcut_drop 0 every map is kept whole; above it, that share of the
    faces keeps none and the others lose soft-edged rectangles (some faces none of them)."""
    from engine.tools.train import kept_regions

    g = torch.Generator().manual_seed(0)
    assert torch.equal(kept_regions(8, 16, 0.0, g), torch.ones(8, 1, 16, 16))
    assert not kept_regions(8, 16, 1.0, g).any()
    keep = kept_regions(400, 16, 0.25, g)
    assert keep.shape == (400, 1, 16, 16)
    assert float(keep.min()) == 0.0
    assert float(keep.max()) == 1.0
    none = (keep.flatten(1).amax(1) == 0).float().mean()
    assert 0.18 < float(none) < 0.32  # the whole map dropped for about a quarter of the faces
    whole = (keep.flatten(1).amin(1) == 1).float().mean()
    assert 0.04 < float(whole) < 0.15  # no rectangle for 1/8 of the rest
    assert bool(((keep > 0) & (keep < 1)).any())  # soft edges
    holes = (keep < 1).flatten(1).float().mean(1)[keep.flatten(1).amax(1) > 0]
    assert 0.1 < float(holes.mean()) < 0.6


def test_faces_without_labels_are_reconstructed_with_the_encoders_reading() -> None:
    from engine.tools.train import Trainer

    a = torch.tensor([[1.0, -1.0], [0.0, 0.0], [0.0, 1.0]])  # labelled, unlabelled, half
    read = torch.tensor([[3.0, 3.0], [0.0, 2.0], [-2.0, -2.0]], requires_grad=True)
    given = Trainer.reconstruction_labels(a, read)
    p = 2 * torch.sigmoid(read.detach()) - 1
    assert torch.equal(given[0], a[0])
    assert torch.allclose(given[1], p[1])
    assert given[2, 0] == p[2, 0]
    assert given[2, 1] == 1.0
    assert not given.requires_grad  # the reading is a target here, not something to move
    assert torch.equal(Trainer.reconstruction_labels(a, None), a)


def test_a_conditioned_model_needs_labelled_data(tmp_path: Path) -> None:
    data = make_cache(tmp_path / "data")
    with pytest.raises(ValueError, match="no labels for Smiling"):
        train(tiny_options(data, tmp_path / "run", model=dataclasses.replace(TINY, attributes=("Smiling",))))


HALF = ModelConfig(resolution=16, latent_dim=16, decoder_channels=(16, 12, 8), encoder_channels=(8, 8),
                   discriminator_channels=(4, 8))
GROWN = dataclasses.replace(TINY, fade_from=16)


def test_a_model_grown_to_twice_the_resolution_starts_as_the_old_one_upsampled(tmp_path: Path) -> None:
    """The new decoder block and encoder stage fade in: at fade 0 the grown model is the old
    one (its output upsampled, its encoder reading the image at half size)."""
    from engine.core.checkpoint import save_model
    from engine.tools.train import Trainer

    torch.manual_seed(2)
    old = FaceModel(HALF).eval()
    with torch.no_grad():
        for m in old.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 1.5)
    save_model(old, tmp_path / "half")
    t = Trainer(tiny_options(tmp_path, tmp_path / "run", model=GROWN, init_from=str(tmp_path / "half")))
    grown = t.model.eval()
    z = torch.randn(3, 16)
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert float(grown.decoder.fade) == 0.0
        expected = F.interpolate(old.decoder(z), scale_factor=2, mode="bilinear", align_corners=False)
        assert torch.allclose(grown.decoder(z), expected, atol=1e-5)
        assert torch.allclose(grown.encode(x), old.encode(F.avg_pool2d(x, 2)), atol=1e-5)
        t.set_fade(t.opts.fade_steps)
        assert not torch.allclose(grown.decoder(z), expected, atol=1e-3)  # the new block alone now


def test_growing_fades_in_and_exports_a_loadable_model(tmp_path: Path, tiny_model_dir: Path) -> None:
    from engine.core.checkpoint import load_model, save_model

    save_model(FaceModel(HALF).eval(), tmp_path / "half")
    data = make_cache(tmp_path / "data")
    run = train(tiny_options(data, tmp_path / "run", model=GROWN, init_from=str(tmp_path / "half"), fade_steps=3,
                             steps=4))
    logs = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [round(r["fade"], 3) for r in logs] == [0.0, 0.333, 0.667, 1.0]
    loaded = load_model(run / "model")
    assert loaded.config.fade_from == 16
    assert float(loaded.model.decoder.fade) == 1.0


def test_a_decoder_given_residual_convs_at_more_resolutions_starts_as_the_one_it_grew_from(
        tmp_path: Path, tiny_model_dir: Path) -> None:
    """The new residual convs start at zero: the grown decoder draws what the old one drew, and
    training can still move them (their scale has a gradient)."""
    from engine.core.checkpoint import load_model
    from engine.tools.train import Trainer

    deeper = dataclasses.replace(TINY, decoder_double_up_to=32)
    t = Trainer(tiny_options(tmp_path, tmp_path / "run", model=deeper, init_from=str(tiny_model_dir)))
    old = load_model(tiny_model_dir).model
    grown = t.model.eval()
    assert grown.decoder.blocks[-1].extra is not None
    assert old.decoder.blocks[-1].extra is None
    z = torch.randn(4, TINY.latent_dim)
    with torch.no_grad():
        assert torch.allclose(grown.decoder(z), old.decoder(z), atol=1e-6)
    grown.train()
    grown.decoder(z).square().mean().backward()
    scale = grown.decoder.blocks[-1].extra[1].weight
    assert scale.grad is not None
    assert scale.grad.abs().sum() > 0


def test_a_classifier_of_its_own_reads_shrunk_shifted_images_and_learns_from_real_photos(tmp_path: Path) -> None:
    """classifier_resolution: C is a separate network reading the images at 16 px (the model
    draws 32), each batch shifted; it is saved with the run and resumes exactly."""
    from engine.core.model import AttributeClassifier
    from engine.tools.train import Trainer

    c = AttributeClassifier(2, 16).eval()
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    shrunk = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False, antialias=True)
    assert torch.allclose(c(x), c(shrunk), atol=1e-6)
    with pytest.raises(ValueError, match="4 times a power of two"):
        AttributeClassifier(2, 24)

    data = make_cache(tmp_path / "data")
    opts = tiny_options(data, tmp_path / "a", model=CONDITIONED, classifier_resolution=16, steps=4)
    t = Trainer(opts)
    assert t.disc.classify is None  # the discriminator has no attribute head then
    view = t.classifier_view(x)
    assert view.shape == x.shape
    shifted = [not torch.equal(t.classifier_view(x), x) for _ in range(8)]
    assert any(shifted)
    straight = train(opts)
    state = load_file(str(straight / "state.safetensors"))
    assert any(k.startswith("classifier.") for k in state)
    assert any(k.startswith("opt_c.") for k in state)
    logs = [json.loads(line) for line in (straight / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(row[k]) for row in logs for k in ("cls_g", "cls_d", "edit_read"))
    train(dataclasses.replace(opts, out=str(tmp_path / "b"), steps=2))
    resumed = train(dataclasses.replace(opts, out=str(tmp_path / "b"), steps=4, resume=True))
    again = load_file(str(resumed / "state.safetensors"))
    assert [k for k in state if not torch.equal(state[k], again[k])] == []


def test_a_grey_classifier_reads_shape_attributes_without_colour_and_colour_ones_in_colour(tmp_path: Path) -> None:
    """classifier_grey: C reads the attributes that are a colour from the colour image and the
    others from a grey view whose channel weights change from image to image."""
    from engine.tools.train import Trainer

    two = dataclasses.replace(TINY, attributes=("Smiling", "Blond_Hair"))
    t = Trainer(tiny_options(tmp_path, tmp_path / "run", model=two, classifier_resolution=16, classifier_grey=True))
    seen: list[torch.Tensor] = []

    def reader(view: torch.Tensor) -> torch.Tensor:  # reads channel 0's mean for both attributes
        seen.append(view)
        return view[:, 0].mean((1, 2))[:, None].expand(-1, 2)

    t.read_attributes = reader  # type: ignore[assignment]
    x = torch.zeros(4, 3, 32, 32)
    x[:, 2] = 1.0  # pure blue: only the grey view, with blue's weight, reads channel 0 as bright
    read = t.classify(x)
    colour, grey = seen
    assert torch.equal(colour, x)  # the colour view: the image (a shift keeps a flat image as it is)
    assert torch.equal(grey[:, 0], grey[:, 1])
    assert torch.equal(grey[:, 1], grey[:, 2])
    weights = grey[:, 0, 0, 0]
    assert bool((weights > 0).all())
    assert len(set(weights.tolist())) == 4  # each image its own mix
    assert torch.allclose(read[:, 0], weights)  # Smiling: from the grey view
    assert torch.equal(read[:, 1], torch.zeros(4))  # Blond_Hair: from the colour image


def test_growing_from_a_run_folder_takes_its_discriminator_and_classifier(tmp_path: Path) -> None:
    from engine.tools.train import Trainer

    data = make_cache(tmp_path / "data")
    first = train(tiny_options(data, tmp_path / "first", model=CONDITIONED, classifier_resolution=16, steps=2))
    state = load_file(str(first / "state.safetensors"))
    t = Trainer(tiny_options(data, tmp_path / "second", model=dataclasses.replace(CONDITIONED, decoder_double_up_to=32),
                             classifier_resolution=16, init_from=str(first)))
    assert t.classifier is not None
    for prefix, module in (("model.", t.model), ("disc.", t.disc), ("classifier.", t.classifier)):
        mine = module.state_dict()
        for k, v in state.items():
            if k.startswith(prefix) and k[len(prefix):] in mine:
                assert torch.equal(mine[k[len(prefix):]], v), k


def test_single_turn_edits_turn_one_attribute_and_keep_the_others(tmp_path: Path) -> None:
    from engine.tools.train import Trainer

    three = dataclasses.replace(TINY, attributes=("A", "B", "C"))
    t = Trainer(tiny_options(tmp_path, tmp_path / "run", model=three, single_turn=0.5))
    a = torch.tensor([[1.0, -1.0, 1.0], [-1.0, -1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, -1.0]] * 4)
    for _ in range(5):
        b = t.edited_labels(a)
        turned = b[:8] != a[:8]
        assert torch.equal(turned.sum(1), torch.ones(8, dtype=torch.long))  # one each
        assert bool((b[:8][turned] != 0).all())  # to present or absent, never unknown
        known = turned & (a[:8] != 0)
        assert torch.equal(b[:8][known], -a[:8][known])
        assert bool(((b[8:] != 0) | (a[8:] == 0)).all())  # the rest: another face's labels, or their own
    plain = Trainer(tiny_options(tmp_path, tmp_path / "run2", model=three))
    b = plain.edited_labels(a)
    assert bool(((b != a).sum(1) != 1).any())  # without it, faces turn many attributes at once


def test_the_worst_nudge_stays_in_its_box_and_reads_worse() -> None:
    """worst_nudge (classifier_robust): each value moves by at most eps, stays in [-1, 1], and the
    classifier's loss on the nudged photos is higher than on the photos themselves."""
    from engine.tools.train import _masked_bce, worst_nudge

    g = torch.Generator().manual_seed(0)
    w = torch.randn(2, 3, 8, 8, generator=g)
    labels = torch.tensor([[1.0, -1.0], [-1.0, 0.0], [1.0, 1.0], [-1.0, 1.0]])

    def loss(v: torch.Tensor) -> torch.Tensor:
        return _masked_bce(torch.einsum("nchw,kchw->nk", v, w) * 0.05, labels)

    x = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1
    x[0] = 1.0  # a white photo cannot get whiter
    nudged = worst_nudge(loss, x, 0.05, g)
    assert not nudged.requires_grad
    assert float((nudged - x).abs().max()) <= 0.05 + 1e-6
    assert float(nudged.abs().max()) <= 1.0
    assert float(loss(nudged)) > float(loss(x)) + 0.01


def test_a_robust_classifier_learns_from_nudged_photos_and_a_plain_one_from_the_photos(tmp_path: Path) -> None:
    from engine.tools.train import Trainer

    data = make_cache(tmp_path / "data")
    for eps in (0.0, 0.05):
        opts = tiny_options(data, tmp_path / f"run{eps}", model=CONDITIONED, classifier_resolution=16,
                            classifier_warmup=2, classifier_robust=eps, steps=2)
        t = Trainer(opts)
        t.load_data()
        x, a = t.batch(0)
        lesson = t.classifier_lesson(x, a)
        assert float((lesson - x).abs().max()) == pytest.approx(eps, abs=1e-6)
        train(opts)  # the warm-up and the steps run with it
        logs = [json.loads(line) for line in (tmp_path / f"run{eps}" / "log.jsonl").read_text().splitlines()]
        assert all(np.isfinite(row["cls_d"]) for row in logs if "cls_d" in row)


def test_the_classifier_warms_up_on_real_photos_before_the_first_step(tmp_path: Path) -> None:
    """classifier_warmup: C learns the labels alone first; the model is not touched then."""
    from engine.tools.train import Trainer

    data = make_cache(tmp_path / "data")
    opts = tiny_options(data, tmp_path / "run", model=CONDITIONED, classifier_resolution=16, classifier_warmup=30,
                        lr=0.01)
    t = Trainer(opts)
    t.load_data()
    assert t.classifier is not None
    before_c = [p.detach().clone() for p in t.classifier.parameters()]
    before_m = {k: v.clone() for k, v in t.model.state_dict().items()}
    x, a = t.batch(0)
    with torch.no_grad():
        loss_before = float(torch.nn.functional.binary_cross_entropy_with_logits(t.classifier(x), (a > 0).float()))
    t.warm_up_classifier()
    with torch.no_grad():
        loss_after = float(torch.nn.functional.binary_cross_entropy_with_logits(t.classifier(x), (a > 0).float()))
    assert loss_after < loss_before
    assert any(not torch.equal(p, q) for p, q in zip(t.classifier.parameters(), before_c, strict=True))
    assert all(torch.equal(v, before_m[k]) for k, v in t.model.state_dict().items())


def test_resume_needs_only_the_run_folder_not_its_options_again(tmp_path: Path) -> None:
    """`npe train --out RUN --resume` continues with the run's own network and options (saved in
    options.json); a resumed run does not need the model it grew from any more. Before, the
    default network was built and loading the run's state failed on every layer's shape."""
    from engine.tools.cli import main

    data = make_cache(tmp_path / "data")
    start = tmp_path / "start"
    assert main(["train", "--data", str(data), "--out", str(start), *TINY_FLAGS, "--steps", "1"]) == 0
    grown = ["--init-from", str(start / "model"), *TINY_FLAGS]
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "a"), *grown, "--steps", "4"]) == 0
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "b"), *grown, "--steps", "2"]) == 0
    shutil.rmtree(start)
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "b"), "--resume", "--steps", "4"]) == 0
    a = load_file(str(tmp_path / "a" / "state.safetensors"))
    b = load_file(str(tmp_path / "b" / "state.safetensors"))
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    history = [json.loads(line) for line in (tmp_path / "b" / "options-history.jsonl").read_text().splitlines()]
    assert [h["from_step"] for h in history] == [0, 2]
    assert history[1]["model"] == history[0]["model"]
    assert history[1]["steps"] == 4


def test_a_batch_is_converted_and_mirrored_where_it_trains_with_the_same_numbers() -> None:
    """The bytes travel to the device and become the networks' input there: the same values as
    the host's to_tensor of the mirrored faces, laid out channels-last."""
    from engine.core.images import to_tensor
    from engine.tools.train import device_batch

    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (5, 8, 6, 3), dtype=np.uint8)
    flip = np.array([True, False, True, True, False])
    x = device_batch(pixels, flip, torch.device("cpu"))
    mirrored = pixels.copy()
    mirrored[flip] = mirrored[flip, :, ::-1]
    assert torch.equal(x, to_tensor(mirrored))
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert not torch.equal(x[0], to_tensor(pixels)[0])  # the first face is mirrored


def test_the_latent_critic_tells_nothing_when_it_says_how_common_each_attribute_is() -> None:
    """Hiding the attributes means the critic can say no more than each one's share of faces (a
    rare attribute's prior is far from a coin: pushing the critic to a coin moves z for nothing)."""
    from engine.tools.train import _masked_guess

    prior = torch.tensor([0.1, 0.7])
    labels = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
    blind = torch.logit(prior).expand(2, 2)
    assert float(_masked_guess(blind, labels, prior)) == pytest.approx(0.0, abs=1e-6)
    assert float(_masked_guess(torch.zeros(2, 2), labels, prior)) > 0.05  # a coin is not blind to a rare one
    sure = _masked_guess(torch.tensor([[4.0, 0.0], [-4.0, 4.0]]), labels, prior)
    assert float(sure) > 1.0
    unknown_only = _masked_guess(blind + torch.tensor([[0.0, 9.0], [0.0, 0.0]]), labels, prior)
    assert float(unknown_only) == pytest.approx(0.0, abs=1e-6)  # the unknown label's reading is left out


def test_the_encoder_hides_the_attributes_from_the_latent_critic(tmp_path: Path) -> None:
    """w_latent (Fader Networks): the encoder's step leaves the critic, as it was, less sure of the
    attributes it reads in z; the critic's own step makes it surer. Both are saved with the run
    and resume exactly; a run without it has no critic."""
    from engine.tools.train import Trainer, _masked_guess

    data = make_cache(tmp_path / "data")
    opts = tiny_options(data, tmp_path / "a", model=CONDITIONED, w_latent=50.0, w_pix=0.0, w_feat=0.0, w_kl=0.0,
                        w_adv=0.0, w_cls=0.0, lr=1e-3, adv_ramp_steps=1)
    t = Trainer(opts)
    t.load_data()
    assert t.critic is not None
    x, a = t.batch(0)
    with torch.no_grad():
        mu = t.model.encoder(x)[0]
    teach = torch.optim.Adam(t.critic.parameters(), lr=0.01)
    for _ in range(30):  # a critic that reads this batch's labels from the mean latent
        loss = F.binary_cross_entropy_with_logits(t.critic(mu)[a != 0], (a[a != 0] > 0).float())
        teach.zero_grad()
        loss.backward()
        teach.step()
    before_critic = [p.detach().clone() for p in t.critic.parameters()]
    with torch.no_grad():
        told_before = float(_masked_guess(t.critic(mu), a, t.label_prior))
    logged = t.train_step((x, a))
    with torch.no_grad():
        after_critic = [p.detach().clone() for p in t.critic.parameters()]
        for p, old in zip(t.critic.parameters(), before_critic, strict=True):
            p.copy_(old)
        told_after = float(_masked_guess(t.critic(t.model.encoder(x)[0]), a, t.label_prior))
    assert told_before > 0.5, told_before
    assert told_after < 0.85 * told_before, told_after
    assert any(not torch.equal(p, q) for p, q in zip(after_critic, before_critic, strict=True))
    assert {"latent_g", "latent_d", "latent_told"} <= set(logged)

    straight = train(dataclasses.replace(opts, out=str(tmp_path / "b"), steps=4))
    state = load_file(str(straight / "state.safetensors"))
    assert any(k.startswith("critic.") for k in state)
    assert any(k.startswith("opt_l.") for k in state)
    train(dataclasses.replace(opts, out=str(tmp_path / "c"), steps=2))
    resumed = train(dataclasses.replace(opts, out=str(tmp_path / "c"), steps=4, resume=True))
    again = load_file(str(resumed / "state.safetensors"))
    assert [k for k in state if not torch.equal(state[k], again[k])] == []
    assert Trainer(dataclasses.replace(opts, w_latent=0.0)).critic is None


def test_autocast_computes_in_bfloat16_and_hands_back_float32() -> None:
    """Autocast (--bf16): the layers compute in bfloat16 (the result moves by bfloat16's rounding,
    not more), its outputs come back float32 whatever their nesting, and off it is the network itself."""
    from engine.core.model import Encoded
    from engine.tools.train import Autocast

    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3, padding=1)
    x = torch.randn(2, 3, 16, 16)
    plain = conv(x)
    out = Autocast(conv, True)(x)
    assert out.dtype == torch.float32
    assert not torch.equal(out, plain)
    assert torch.allclose(out, plain, atol=0.05)
    assert torch.equal(Autocast(conv, False)(x), plain)

    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = conv

        def forward(self, x: torch.Tensor) -> tuple[Encoded, list[torch.Tensor | None]]:
            y = self.conv(x).mean((2, 3))
            return Encoded(y, y, None, self.conv(x)), [y, None]
    enc, rest = Autocast(Pair(), True)(x)
    assert isinstance(enc, Encoded)
    assert enc.attributes is None
    assert rest[1] is None
    assert enc.shortcut is not None
    assert all(t is not None and t.dtype == torch.float32 for t in (enc.mu, enc.logvar, enc.shortcut, rest[0]))


def test_training_in_bfloat16_steps_exports_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--bf16 on a conditioned model with a shortcut, its classifier and latent critic: finite
    losses, float32 weights in the export and the state, and a resume that continues it (run
    in bfloat16 whatever this CPU has: emulated, it is slow but computes the same)."""
    from engine.core.checkpoint import load_model
    from engine.tools import train as train_module

    monkeypatch.setattr(train_module, "native_bf16", lambda device: True)
    data = make_cache(tmp_path / "data")
    opts = tiny_options(data, tmp_path / "run", model=SHORTCUT, bf16=True, classifier_resolution=16,
                        classifier_grey=True, w_latent=0.3, shortcut_drop=0.25, edits_without_map=True, steps=2)
    train(opts)
    out = train(dataclasses.replace(opts, steps=4, resume=True))
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "pix" in r] == [1, 2, 3, 4]
    assert all(np.isfinite(v) for r in log for v in r.values())
    assert {"cls_g", "latent_g", "edit_read"} <= set(log[-1])
    state = load_file(str(out / "state.safetensors"))
    assert {v.dtype for k, v in state.items() if v.is_floating_point()} == {torch.float32}
    loaded = load_model(out / "model")
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())


def test_bf16_falls_back_to_float32_where_the_device_would_emulate_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """--bf16 on a CPU without AVX-512 BF16 or AMX: autocast would emulate bfloat16 about 20x
    slower than float32, so every network the step calls runs as it is and the run says why;
    where the device has it, every one runs under autocast."""
    from engine.tools import train as train_module
    from engine.tools.train import Trainer

    data = make_cache(tmp_path / "data")
    opts = tiny_options(data, tmp_path / "run", model=SHORTCUT, bf16=True, classifier_resolution=16, w_latent=0.3)
    for native in (False, True):
        monkeypatch.setattr(train_module, "native_bf16", lambda device, native=native: native)
        t = Trainer(opts)
        calls = [t.enc, t.dec, t.disc_ddp, t.read_attributes, t.read_latent]
        assert [c.enabled for c in calls] == [native] * 5  # type: ignore[union-attr]
        assert ("--bf16 ignored" in capsys.readouterr().err) is not native


def test_every_gpu_recipe_is_a_valid_train_command() -> None:
    """A lent GPU runs engine/tools/gpu_recipes_*.txt as they are: a misspelt option there costs
    the machine's minutes, so each line must parse as `npe train` options, names unique."""
    from engine.tools.cli import build_parser

    parser = build_parser()
    names = []
    for recipes in sorted((ROOT / "engine" / "tools").glob("gpu_recipes_*.txt")):
        for line in recipes.read_text().splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            name, *options = line.split()
            names.append(name)
            args = parser.parse_args(["train", "--data", "d", "--out", "o", *options])
            assert args.attributes, name
    assert names
    assert len(names) == len(set(names))


YELLOW = (200, 180, 60)  # a blond: what attribute A does to the top of the tests' faces


def test_the_colour_shift_is_fitted_on_how_each_attribute_changes_real_photos_colours(tmp_path: Path) -> None:
    """attribute_colour_shift: over grey faces whose attribute A yellows the top rows (hair going
    blond) and whose B does nothing, A's shift is that yellow in the top cells alone, B's none; a
    face with an unknown label (here a red one) is left out of the fit."""
    from engine.tools.data import AlignedFaces
    from engine.tools.train import attribute_colour_shift, opponent_colour

    cache = make_cache(tmp_path / "data", n=80) / "aligned-32"
    labels = np.load(cache / "labels.npy")
    rng = np.random.default_rng(3)
    images = (128 + rng.integers(-20, 21, (80, 32, 32, 3))).astype(np.uint8)
    images[labels[:, 0] > 0, :8] = YELLOW
    labels[1], images[1] = (0, 1), (255, 0, 0)
    np.save(cache / "labels.npy", labels)
    np.save(cache / "images.npy", images)
    shift = attribute_colour_shift(AlignedFaces(cache, split="train", sets=("celeba",)), [0, 1]).view(2, 2, 8, 8)
    grey, yellow = torch.zeros(1, 3, 32, 32), torch.tensor(YELLOW).view(1, 3, 1, 1).expand(1, 3, 32, 32) / 127.5 - 1
    blond = (opponent_colour(yellow) - opponent_colour(grey)).view(2, 8, 8)[:, 0, 0]
    assert torch.allclose(shift[0, :, :2], blond[:, None, None].expand(2, 2, 8), atol=0.03)
    assert float(shift[0, :, 2:].abs().max()) < 0.03
    assert float(shift[1].abs().max()) < 0.03


def test_the_colour_term_charges_edits_a_tint_real_photos_do_not_get_and_leaves_lightness_free() -> None:
    from engine.tools.train import colour_mismatch, opponent_colour

    rebuilt = torch.zeros(3, 3, 32, 32)  # grey faces
    blond = rebuilt.clone()
    blond[:, :, :8] = torch.tensor(YELLOW).view(3, 1, 1) / 127.5 - 1
    shift = torch.zeros(2, 2 * 8 * 8)
    shift[0] = (opponent_colour(blond[:1]) - opponent_colour(rebuilt[:1]))[0]  # A goes blond, B changes no colour
    a_on, b_on, nothing = torch.tensor([[1.0, 0.0]] * 3), torch.tensor([[0.0, 1.0]] * 3), torch.zeros(3, 2)
    assert float(colour_mismatch(blond, rebuilt, a_on, shift)) < 1e-6  # as real photos go blond
    assert float(colour_mismatch(rebuilt, blond, -a_on, shift)) < 1e-6  # and back
    assert float(colour_mismatch(blond, rebuilt, nothing, shift)) > 0.05  # the same tint for nothing turned
    assert float(colour_mismatch(rebuilt - 0.5, rebuilt, b_on, shift)) < 1e-6  # darker, not coloured: free
    band = rebuilt.clone()
    band[:, 2, 12:16] = 0.6  # eyeglasses drawn as a blue band
    assert float(colour_mismatch(band, rebuilt, b_on, shift)) > 0.01
    edited, recon = blond.clone().requires_grad_(True), rebuilt.clone().requires_grad_(True)
    colour_mismatch(edited, recon, nothing, shift).backward()
    assert recon.grad is None  # the reconstruction is not pulled towards the edit
    assert edited.grad is not None
    assert float(edited.grad.abs().sum()) > 0


def test_a_finer_colour_grid_sees_a_two_coloured_mark_a_coarse_one_averages_away() -> None:
    """colour_mismatch takes its grid from the shift's size: a mark red on one half of a coarse
    cell and green on the other (one eye of eyeglasses tinted each way) costs nothing over 8 x 8
    cells and is charged over 16 x 16."""
    from engine.tools.train import colour_mismatch

    rebuilt = torch.zeros(2, 3, 32, 32)
    marked = rebuilt.clone()
    marked[:, 0, 12:16, 12:14], marked[:, 1, 12:16, 12:14] = 0.5, -0.5  # red beside
    marked[:, 0, 12:16, 14:16], marked[:, 1, 12:16, 14:16] = -0.5, 0.5  # green, in one 4-pixel cell
    turned = torch.tensor([[1.0], [1.0]])
    assert float(colour_mismatch(marked, rebuilt, turned, torch.zeros(1, 2 * 8 * 8))) < 1e-6
    assert float(colour_mismatch(marked, rebuilt, turned, torch.zeros(1, 2 * 16 * 16))) > 1e-3


def test_conditioned_training_logs_the_colour_term_only_when_it_is_on(tmp_path: Path) -> None:
    from engine.tools.train import Trainer

    data = make_cache(tmp_path / "data")
    two = dataclasses.replace(TINY, attributes=("A", "B"))
    for w, run in ((1.0, tmp_path / "on"), (0.0, tmp_path / "off")):
        train(tiny_options(data, run, model=two, steps=2, w_colour=w, colour_cells=16))
        logs = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        assert all(("colour" in row) == bool(w) for row in logs)
        assert all(np.isfinite(row["colour"]) and row["colour"] > 0 for row in logs if w)
    trainer = Trainer(tiny_options(data, tmp_path / "fitted", model=two, w_colour=1.0, colour_cells=16))
    trainer.load_data()
    assert trainer.colour_shift is not None
    assert trainer.colour_shift.shape == (2, 2 * 16 * 16)  # the grid asked for
