"""Attribute directions: files, conditional editing, and learning on a tiny synthetic setup."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.core.attributes import Attribute, AttributeSet, SliderKind, SliderValues
from engine.core.checkpoint import ModelError
from engine.tools.attribute_learning import (
    AttributeJudge,
    fit_direction,
    keep_better_kind,
    label_holds,
    pca_directions,
    quality_of,
)
from tests.conftest import TINY, make_tiny_model


def test_directions_round_trip_and_match_the_latent_size(tiny_model_dir: Path, tmp_path: Path) -> None:
    attrs = AttributeSet.load(tiny_model_dir, TINY.latent_dim)
    assert attrs.names == ["smiling", "eyeglasses", "pc1"]
    assert attrs.directions.shape == (3, TINY.latent_dim)
    assert torch.allclose(attrs.directions.norm(dim=1), torch.ones(3))
    assert [a.name for a in attrs.visible()] == ["smiling", "eyeglasses", "pc1"]
    with pytest.raises(ModelError, match="latent size"):
        AttributeSet.load(tiny_model_dir, TINY.latent_dim + 1)
    d = tmp_path / "m"
    shutil.copytree(tiny_model_dir, d)
    (d / "attributes.json").write_text("{broken")
    with pytest.raises(ModelError, match="damaged"):
        AttributeSet.load(d, TINY.latent_dim)
    assert AttributeSet.load(tmp_path, 8).names == []  # a model without directions


def test_conditional_direction_is_orthogonal_to_the_held_ones() -> None:
    d = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0]])
    attrs = AttributeSet([Attribute("gray", "Gray", 1.0, default_hold=("age",)), Attribute("age", "Age", 1.0)], d)
    g = attrs.direction("gray")
    assert float(g @ d[1]) == pytest.approx(0.0, abs=1e-6)
    assert float(g.norm()) == pytest.approx(1.0)
    assert torch.allclose(attrs.direction("gray", hold=False), d[0])
    off = attrs.offset({"gray": 2.0, "age": 0.0})
    assert torch.allclose(off, 2.0 * g)
    assert torch.allclose(attrs.offset({"gray": 2.0}, hold=False), 2.0 * d[0])


def test_a_slider_can_pass_the_judge_only_with_its_correlated_attributes_free(tmp_path: Path) -> None:
    d = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0]])
    attrs = AttributeSet([Attribute("gray", "Gray", 1.0, quality="hidden", quality_independent="weak",
                                    default_hold=("age",)), Attribute("age", "Age", 1.0)], d)
    attrs.save(tmp_path)
    attrs = AttributeSet.load(tmp_path, 3)
    assert [a.name for a in attrs.visible()] == ["age"]
    assert [a.name for a in attrs.visible(hold=False)] == ["gray", "age"]
    gray = attrs.sliders()[0]
    assert (gray.quality(hold=True), gray.quality(hold=False)) == ("hidden", "weak")
    assert gray.kind is SliderKind.DIRECTION


def test_slider_values_have_one_form() -> None:
    a = SliderValues.of({"smiling": 1.5, "age": 0.0, "bangs": -1})
    assert a.items == (("bangs", -1.0), ("smiling", 1.5))  # sorted, zeros left out
    assert a == SliderValues.of([("smiling", 1.5), ("bangs", -1.0)])
    assert a.get("age") == 0.0
    assert dict(a) == {"bangs": -1.0, "smiling": 1.5}
    assert not SliderValues.of({"smiling": 0.0})


def test_older_attribute_files_name_the_kinds_as_strings(tmp_path: Path, tiny_model_dir: Path) -> None:
    doc = json.loads((tiny_model_dir / "attributes.json").read_text())
    for a in doc["attributes"]:
        a["kind"] = {"direction": "named", "principal": "pca"}[a["kind"]]
    shutil.copytree(tiny_model_dir, tmp_path / "m")
    (tmp_path / "m" / "attributes.json").write_text(json.dumps(doc))
    kinds = [a.kind for a in AttributeSet.load(tmp_path / "m", TINY.latent_dim).attributes]
    assert kinds == [SliderKind.DIRECTION, SliderKind.DIRECTION, SliderKind.PRINCIPAL]


def test_a_learned_slider_moves_a_pixel_judge_the_right_way() -> None:
    """Label = 'the decoded face is bright'; the learned direction must brighten faces."""
    model = make_tiny_model(2)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(600, TINY.latent_dim, generator=g)
    with torch.no_grad():
        brightness = model.decode(z).mean(dim=(1, 2, 3))
    positive = (brightness > brightness.median()).numpy()
    d = fit_direction(z.numpy(), positive, "bright")
    assert d.latent_accuracy > 0.7
    assert d.step > 0
    zt = torch.randn(100, TINY.latent_dim, generator=g)
    step = torch.from_numpy(d.vector) * d.step
    with torch.no_grad():
        before = model.decode(zt).mean(dim=(1, 2, 3))
        after = model.decode(zt + step).mean(dim=(1, 2, 3))
        lower = model.decode(zt - step).mean(dim=(1, 2, 3))
    assert (after > before).float().mean() > 0.9
    assert (lower < before).float().mean() > 0.9


def test_one_step_moves_the_average_face_without_to_the_average_face_with() -> None:
    rng = np.random.default_rng(3)
    lat = rng.normal(size=(2000, 6)).astype(np.float32)
    positive = rng.random(2000) < 0.3
    lat[positive] += np.array([2.0, -1.0, 0, 0, 0, 0], np.float32)
    lat[:, 5] *= 0.01  # a low-variance axis that separates perfectly ...
    lat[positive, 5] += 0.05  # ... but would move the decoded face by almost nothing
    d = fit_direction(lat, positive, "x")
    moved = lat[~positive].mean(0) + d.step * d.vector
    assert np.allclose(moved, lat[positive].mean(0), atol=1e-4)
    assert np.linalg.norm(d.vector) == pytest.approx(1.0, abs=1e-5)
    assert abs(d.vector[5]) < 0.05
    assert 0.8 < d.latent_accuracy < 1.0


def test_label_holds_find_correlated_attributes() -> None:
    rng = np.random.default_rng(0)
    male = rng.choice([-1, 1], 500)
    beard = np.where(rng.random(500) < 0.9, -male, male)  # No_Beard is -1 mostly for men
    young = rng.choice([-1, 1], 500)
    names = ["Male", "No_Beard", "Young", "Smiling"]
    labels = np.stack([male, beard, young, rng.choice([-1, 1], 500)], 1).astype(np.int8)
    holds = label_holds(labels, names)
    assert "male" in holds["beard"]
    assert "age" not in holds["beard"]


def test_pca_directions_are_orthonormal_and_sorted() -> None:
    rng = np.random.default_rng(1)
    lat = rng.normal(size=(400, 8)) * np.array([5, 3, 2, 1, 1, 1, 1, 1])
    dirs = pca_directions(lat, 3)
    m = np.stack([d.vector for d in dirs])
    assert np.allclose(m @ m.T, np.eye(3), atol=1e-5)
    assert dirs[0].step > dirs[1].step > dirs[2].step
    assert abs(dirs[0].vector[0]) > 0.95


def test_quality_marks() -> None:
    def q(up: float, end: float, down: float = 0.5, base: float = 0.05, **measured: float) -> str:
        return quality_of({"flip_to_positive": up, "flip_to_negative": down,
                           "flip_to_positive_at_slider_end": end, "judge_false_positive_before": base, **measured})

    assert q(0.8, 0.95) == "good"
    assert q(0.3, 0.6) == "weak"  # works only towards the slider's end
    assert q(0.3, 0.6, base=0.4) == "hidden"  # no better than the judge's own false positives
    assert q(0.05, 0.1, down=1.0) == "hidden"  # removing by blurring is not enough
    assert q(float("nan"), float("nan")) == "hidden"
    # a coloured mark where the attribute goes (a blue band for eyeglasses) is not shown, however well it is read
    assert q(0.8, 0.95, **{"chroma_excess_at_+1": 9.3}) == "hidden"
    assert q(0.3, 0.6, **{"chroma_excess_at_+1": 3.4}) == "hidden"
    assert q(0.8, 0.95, **{"chroma_excess_at_+1": 1.8}) == "good"
    assert q(0.3, 0.6, **{"chroma_excess_at_+1": 2.9}) == "weak"


def test_each_conditioned_attribute_keeps_the_slider_the_judge_rated_highest() -> None:
    """Of an attribute's sliders, the decoder's input, the input and the latent together, and the
    latent direction, the highest rated stays: a way that adds the attribute to more faces wins,
    unless its coloured mark hides it; a tie keeps the earlier (the input first, the direction last);
    an attribute the decoder does not take keeps its direction. Every kept slider keeps its
    direction's vector, for the sliders that hold it fixed."""
    names = ["smiling", "eyeglasses", "bangs", "male", "age"]
    dirs = torch.eye(len(names), TINY.latent_dim)
    latent = AttributeSet([Attribute(n, n, 1.0) for n in names], dirs)
    inputs = {n: Attribute(n, n, 1.0, kind=SliderKind.CONDITION, condition=i) for i, n in enumerate(names[:3])}
    both = {n: replace(a, latent_step=0.5) for n, a in inputs.items()}
    both["age"] = Attribute("age", "age", 1.0, kind=SliderKind.CONDITION, condition=4, latent_step=0.5)

    def r(up: float, end: float, mark: float = 0.0) -> dict[str, float]:
        return {"flip_to_positive": up, "flip_to_positive_at_slider_end": end, "judge_false_positive_before": 0.05,
                "chroma_excess_at_+1": mark}
    report = {"smiling": r(0.9, 0.95), "eyeglasses": r(0.9, 0.95, mark=9.3), "bangs": r(0.5, 0.9),
              "male": r(0.9, 0.95), "age": r(0.5, 0.9)}
    input_report = {"smiling": r(0.3, 0.6), "eyeglasses": r(0.3, 0.6), "bangs": r(0.5, 0.9)}
    both_report = {"smiling": r(0.6, 0.9), "eyeglasses": r(0.3, 0.6), "bangs": r(0.5, 0.9), "age": r(0.7, 0.9)}
    kept_set, kept, passed_over = keep_better_kind(latent, [(inputs, input_report), (both, both_report)], report)
    assert {a.name: (a.kind, a.latent_step) for a in kept_set.attributes} == {
        "smiling": (SliderKind.DIRECTION, 0.0), "eyeglasses": (SliderKind.CONDITION, 0.0),
        "bangs": (SliderKind.CONDITION, 0.0), "male": (SliderKind.DIRECTION, 0.0), "age": (SliderKind.CONDITION, 0.5)}
    assert kept["smiling"] == report["smiling"]
    assert kept["eyeglasses"] == input_report["eyeglasses"]
    assert kept["age"] == both_report["age"]
    assert passed_over == {
        "smiling": [{"kind": "condition", **input_report["smiling"]},
                    {"kind": "condition", "latent_step": 0.5, **both_report["smiling"]}],
        "eyeglasses": [{"kind": "condition", "latent_step": 0.5, **both_report["eyeglasses"]},
                       {"kind": "direction", **report["eyeglasses"]}],
        "bangs": [{"kind": "condition", "latent_step": 0.5, **both_report["bangs"]},
                  {"kind": "direction", **report["bangs"]}],
        "age": [{"kind": "direction", **report["age"]}]}
    for a, d in zip(kept_set.attributes, kept_set.directions, strict=True):
        assert torch.equal(d, dirs[names.index(a.name)])


def test_a_condition_slider_with_a_latent_step_moves_the_latent_too(tmp_path: Path) -> None:
    """A CONDITION slider moves the latent by value * latent_step along its direction, and by
    nothing without one; a latent slider by value * step. The step survives the model's files."""
    dirs = torch.eye(3, TINY.latent_dim)
    attrs = AttributeSet([Attribute("smiling", "s", 2.0, kind=SliderKind.CONDITION, condition=0, latent_step=0.5),
                          Attribute("eyeglasses", "e", 2.0, kind=SliderKind.CONDITION, condition=1),
                          Attribute("male", "m", 3.0)], dirs)
    assert torch.equal(attrs.offset({"smiling": 2.0}), 1.0 * dirs[0])
    assert torch.equal(attrs.offset({"eyeglasses": 2.0}), torch.zeros(TINY.latent_dim))
    assert torch.equal(attrs.offset({"smiling": 2.0, "eyeglasses": 1.0, "male": -1.0}), dirs[0] - 3.0 * dirs[2])
    assert torch.equal(attrs.condition_offset({"smiling": 2.0, "eyeglasses": 1.0, "male": -1.0}, 2),
                       torch.tensor([4.0, 2.0]))
    attrs.save(tmp_path)
    assert [a.latent_step for a in AttributeSet.load(tmp_path, TINY.latent_dim).attributes] == [0.5, 0.0, 0.0]


def test_judge_shapes() -> None:
    j = AttributeJudge(40, width=4)
    assert j(torch.zeros(2, 3, 32, 32)).shape == (2, 40)


def test_the_judge_reads_a_crop_at_the_resolution_it_was_trained_on(tmp_path: Path) -> None:
    """A 128-px model's crops are scored as the judge saw faces in training (64 px), not as
    faces twice the size: the same smooth face at 32 and at 64 px gets the same scores."""
    import json

    import torch.nn.functional as F

    from engine.core.judge import judge_scores, load_judge, save_judge

    torch.manual_seed(0)
    j = AttributeJudge(3, resolution=32)
    with torch.no_grad():
        for p in j.parameters():
            p.normal_(0, 0.15)
    save_judge(j.eval(), tmp_path, ["A", "B", "C"], {})
    judge, names = load_judge(tmp_path)
    assert judge.resolution == 32
    assert names == ["A", "B", "C"]
    small = F.interpolate(torch.rand(4, 3, 4, 4) * 2 - 1, size=(32, 32), mode="bilinear", align_corners=False)
    large = F.interpolate(small, size=(64, 64), mode="bilinear", align_corners=False)
    at_32, at_64 = judge_scores(judge, small), judge_scores(judge, large)
    as_is = torch.sigmoid(judge(large)).detach()  # read as it comes, the larger face scores otherwise
    assert (at_64 - at_32).abs().max() < 0.1 * (as_is - at_32).abs().max()
    meta = json.loads((tmp_path / "judge.json").read_text())
    del meta["resolution"]  # judges saved before it was named were trained at 64 px
    (tmp_path / "judge.json").write_text(json.dumps(meta))
    assert load_judge(tmp_path)[0].resolution == 64


def test_learning_and_judging_sliders_end_to_end(tiny_model_dir: Path, tmp_path: Path) -> None:
    """`npe attributes` then `npe eval --attributes` on a tiny labelled cache: files, figures, grid."""
    import json

    from engine.tools.cli import main
    from tests.test_train import make_cache

    data = make_cache(tmp_path / "data", n=240, size=TINY.resolution)
    cache = data / f"aligned-{TINY.resolution}"
    rng = np.random.default_rng(5)
    male = rng.choice(np.array([-1, 1], np.int8), 240)
    smiling = np.where(rng.random(240) < 0.8, male, -male).astype(np.int8)  # correlated: smiling holds male
    young = rng.choice(np.array([-1, 1], np.int8), 240)
    np.save(cache / "labels.npy", np.stack([smiling, male, young], 1))
    meta = json.loads((cache / "meta.json").read_text())
    meta["attribute_names"] = ["Smiling", "Male", "Young"]
    (cache / "meta.json").write_text(json.dumps(meta))
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    for f in ("attributes.json", "attributes.safetensors"):
        (model / f).unlink()
    assert main(["attributes", "--data", str(data), "--weights", str(model), "--device", "cpu"]) == 0
    attrs = AttributeSet.load(model, TINY.latent_dim)
    assert [a.name for a in attrs.attributes if a.kind is SliderKind.DIRECTION] == ["smiling", "male", "age"]
    assert attrs.get("smiling").default_hold == ("male",)
    assert all(a.quality in ("good", "weak", "hidden") for a in attrs.attributes)
    assert (model / "judge.safetensors").exists()
    doc = json.loads((model / "attributes.json").read_text())
    smiling = doc["evaluation"]["smiling"]
    assert {"flip_to_positive", "flip_to_positive_at_slider_end", "judge_false_positive_before",
            "flip_to_positive_independent", "outside_face_change"} <= set(smiling)
    assert "flip_to_positive_independent" not in doc["evaluation"]["age"]  # age holds nothing here
    grid = tmp_path / "grid.png"
    assert main(["eval", "--attributes", "--data", str(data), "--weights", str(model), "--device", "cpu",
                 "--n", "20", "--grid", str(grid)]) == 0
    from PIL import Image

    with Image.open(grid) as im:
        assert im.size[1] > 3 * TINY.resolution  # a row per slider


def test_colour_sliders_are_measured_against_how_real_photos_differ(tiny_model_dir: Path, tmp_path: Path) -> None:
    """`npe eval --attributes`' colour figures: held-out photos labelled black-haired are darker at
    the top of the head, and the slider's CIELAB change there is reported at +1 and +2."""
    from engine.core.pipeline import Engine
    from engine.tools.attribute_learning import colour_against_real, hair_top_region
    from engine.tools.data import AlignedFaces, aligned_cache
    from tests.test_train import make_cache

    data = make_cache(tmp_path / "data", n=200, size=TINY.resolution)
    cache = data / f"aligned-{TINY.resolution}"
    rng = np.random.default_rng(3)
    black = rng.choice(np.array([-1, 1], np.int8), 200)
    images = np.load(cache / "images.npy")
    top = hair_top_region(TINY.resolution).numpy()
    images[:, top] = np.where(black[:, None, None] > 0, 30, 160).astype(np.uint8)  # dark hair, or light
    np.save(cache / "images.npy", images)
    np.save(cache / "labels.npy", np.stack([black, -black], 1))
    meta = json.loads((cache / "meta.json").read_text())
    meta["attribute_names"] = ["Black_Hair", "Blond_Hair"]
    (cache / "meta.json").write_text(json.dumps(meta))
    engine = Engine.load(str(tiny_model_dir), "cpu")
    v = torch.randn(2, TINY.latent_dim)
    attrs = AttributeSet([Attribute("black_hair", "Black hair", 2.0), Attribute("smiling", "Smiling", 2.0)],
                         v / v.norm(dim=1, keepdim=True))
    test = AlignedFaces(aligned_cache(data, TINY.resolution), split="test", sets=("celeba",))
    report = colour_against_real(engine, attrs, test, n=40)
    assert set(report) == {"black_hair"}  # smiling is no colour; blond hair has no slider here
    entry = report["black_hair"]
    assert entry["real_with_less_without"][0] < -30  # L*: black hair is darker
    assert {"slider_at_+1", "slider_at_+2"} <= set(entry)
    assert all(len(entry[k]) == 3 and np.isfinite(entry[k]).all() for k in ("slider_at_+1", "slider_at_+2"))
    assert len(entry["chroma_excess_by_part"]) == 6  # the top of the head in 2 rows of 3
    assert entry["chroma_excess_at_+1"] == max(entry["chroma_excess_by_part"])


def _faces_coloured_by_label(tmp_path: Path, column: str, region: torch.Tensor, seed: int) -> object:
    """Held-out tiny faces labelled ``column`` at random, ``region`` blue where it is present and
    brown where it is absent."""
    from engine.tools.data import AlignedFaces, aligned_cache
    from tests.test_train import make_cache

    data = make_cache(tmp_path / "data", n=200, size=TINY.resolution)
    cache = data / f"aligned-{TINY.resolution}"
    label = np.random.default_rng(seed).choice(np.array([-1, 1], np.int8), 200)
    images = np.load(cache / "images.npy")
    images[:, region.numpy()] = np.where(label[:, None, None] > 0, [40, 60, 200], [150, 120, 100]).astype(np.uint8)
    np.save(cache / "images.npy", images)
    np.save(cache / "labels.npy", label[:, None])
    meta = json.loads((cache / "meta.json").read_text())
    meta["attribute_names"] = [column]
    (cache / "meta.json").write_text(json.dumps(meta))
    return AlignedFaces(aligned_cache(data, TINY.resolution), split="test", sets=("celeba",))


def _one_slider(name: str, label: str) -> AttributeSet:
    direction = torch.nn.functional.normalize(torch.randn(1, TINY.latent_dim), dim=1)
    return AttributeSet([Attribute(name, label, 2.0)], direction)


def test_a_slider_that_changes_the_whole_face_is_measured_over_it(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Female / male (FACE_SLIDERS) has its colour measured over the face, part by part: here the
    labelled photos' faces are blue, and the real difference says so in every part."""
    from engine.core.pipeline import Engine
    from engine.tools.attribute_learning import colour_against_real, face_region

    test = _faces_coloured_by_label(tmp_path, "Male", face_region(TINY.resolution), seed=7)
    engine = Engine.load(str(tiny_model_dir), "cpu")
    entry = colour_against_real(engine, _one_slider("male", "Female / male"), test, n=40)["male"]
    assert entry["real_with_less_without"][2] < -40  # b*: the blue faces
    assert len(entry["chroma_excess_by_part"]) == 6
    assert all(v < -30 for v in entry["chroma_excess_by_part"])  # a slider that adds no blue: far below real


def test_a_region_is_cut_into_disjoint_parts_that_cover_it() -> None:
    from engine.tools.attribute_learning import MARK_REGIONS, face_region, region_parts

    for region in (MARK_REGIONS["eyeglasses"](64), face_region(64), MARK_REGIONS["mustache"](16)):
        parts = region_parts(region)
        assert len(parts) == 6
        assert torch.equal(torch.stack(parts).sum(0), region.long())  # each pixel in exactly one part
    eyes = region_parts(MARK_REGIONS["eyeglasses"](64))
    cols = [torch.nonzero(p, as_tuple=True)[1].float().mean() for p in eyes[:3]]
    assert cols[0] < cols[1] < cols[2]  # left eye, bridge, right eye
    assert region_parts(torch.zeros(8, 8, dtype=torch.bool)) == []


def test_a_mark_of_two_colours_is_not_averaged_away() -> None:
    """Green on one eye and magenta on the other: the mean over the eyes has no a* change, the
    parts' largest excess is the mark's."""
    from engine.tools.attribute_learning import chroma_excess

    change = np.array([[-5, -9, 0], [-5, 0, 0], [-5, 9, 0]], np.float32)  # L*, a*, b* per part
    real = np.array([[-6, 1, 1], [-6, 1, 1], [-6, 1, 1]], np.float32)
    assert abs(change.mean(0)[1]) < 1e-6
    assert chroma_excess(change, real).max() == pytest.approx(9 - np.sqrt(2), abs=1e-4)
    assert chroma_excess(real, real) == pytest.approx(np.zeros(3))


def test_a_slider_that_draws_in_one_place_is_measured_there(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Eyeglasses are measured over the eyes (MARK_REGIONS), so a coloured mark there shows in
    a* and b*: here the labelled photos' eyes are blue, and the real difference says so."""
    from engine.core.pipeline import Engine
    from engine.tools.attribute_learning import MARK_REGIONS, colour_against_real

    test = _faces_coloured_by_label(tmp_path, "Eyeglasses", MARK_REGIONS["eyeglasses"](TINY.resolution), seed=5)
    engine = Engine.load(str(tiny_model_dir), "cpu")
    entry = colour_against_real(engine, _one_slider("eyeglasses", "Eyeglasses"), test, n=40)["eyeglasses"]
    assert entry["real_with_less_without"][2] < -40  # b*: the blue eyes, measured where they are
    assert np.isfinite(entry["chroma_excess_at_+1"])
