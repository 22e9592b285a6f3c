"""A conditioned decoder G(z, a) in the editor: sliders on the decoder's attribute input start
from the encoder's reading of the photo, leave the latent alone, and go through undo, the
brush, session files and the command line like any other slider."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.core.attributes import CONDITION_LIMIT, Attribute, AttributeSet, SliderKind, condition_input
from engine.core.document import load_session, save_session
from engine.core.pipeline import Engine, open_session
from engine.tools.cli import main
from tests.conftest import CONDITIONED


@pytest.fixture
def conditioned(tiny_conditioned_model_dir: Path) -> Engine:
    return Engine.load(tiny_conditioned_model_dir, "cpu")


def test_a_condition_slider_moves_the_decoders_input_not_the_latent(conditioned: Engine, face_photo: Path) -> None:
    s, _ = open_session(conditioned, face_photo)
    assert s.a0 is not None
    assert s.a0.shape == (1, 2)
    assert bool((s.a0.abs() <= 1).all())  # the encoder's reading, in [-1, 1]
    before = s.composite()
    z = s.z.clone()
    s.set_sliders({"eyeglasses": 1.5})
    s.commit()
    assert torch.equal(s.z, z)
    assert torch.allclose(s.a, condition_input(s.a0, torch.tensor([[0.0, 1.5]])))
    assert s.edited
    after = s.composite()
    assert not np.array_equal(after, before)
    # the brush still paints, with the slider's input kept
    s.brush_begin((10, 10, 10), 6)
    for p in ((30, 30), (50, 35)):
        s.brush_to([p])
    s.brush_end()
    assert not torch.equal(s.z, z)
    assert torch.allclose(s.a, condition_input(s.a0, torch.tensor([[0.0, 1.5]])))
    s.undo()
    assert np.array_equal(s.composite(), after)
    s.undo()
    assert np.array_equal(s.composite(), before)


def test_a_brush_that_moves_the_attribute_input_goes_through_sliders_undo_and_session_files(
        conditioned: Engine, face_photo: Path, tmp_path: Path) -> None:
    """With ``BrushRule.attributes`` a stroke moves the decoder's attribute input as well as z; the
    sliders add to that move, and undo, redo and session files keep it with the step it belongs to."""
    s, faces = open_session(conditioned, face_photo)
    assert s.a0 is not None
    s.rule = replace(s.rule, attributes=0.1)
    before = s.composite()
    s.paint((10, 10, 10), 6, [(30, 30), (40, 32), (50, 35)])
    moved = s.brush_attributes
    assert moved is not None
    assert float(moved.abs().max()) > 0.02
    assert torch.allclose(s.a, condition_input(s.a0, moved))
    assert s.edited
    painted = s.composite()
    assert not np.array_equal(painted, before)
    s.set_sliders({"eyeglasses": 1.0})
    s.commit()
    assert torch.allclose(s.a, condition_input(s.a0, moved + torch.tensor([[0.0, 1.0]])))
    save_session(s, tmp_path / "b.npe", faces, 0)
    again, _, _ = load_session(conditioned, tmp_path / "b.npe")
    assert again.brush_attributes is not None
    assert torch.equal(again.brush_attributes, moved)
    assert np.array_equal(again.composite(), s.composite())
    again.undo()  # the slider: the stroke's move stays
    assert np.array_equal(again.composite(), painted)
    again.undo()  # the stroke
    assert again.brush_attributes is not None
    assert not again.brush_attributes.any()
    assert np.array_equal(again.composite(), before)
    again.redo()
    assert np.array_equal(again.composite(), painted)
    again.reset()
    assert not again.brush_attributes.any()
    # the model's own rule (step 0) leaves the attribute input to the sliders
    plain, _ = open_session(conditioned, face_photo)
    plain.paint((10, 10, 10), 6, [(30, 30), (40, 32), (50, 35)])
    assert plain.brush_attributes is not None
    assert not plain.brush_attributes.any()
    assert torch.equal(plain.a, plain.a0)


def test_the_attribute_input_bends_toward_its_limit_past_the_trained_range() -> None:
    """Inside [-1, 1] a slider's move is added as it is; past it the input bends smoothly (no
    step at the edge) and monotonically towards +-CONDITION_LIMIT and never passes it, so a
    slider at +2 cannot drive the decoder far outside what it learned."""
    a0 = torch.tensor([[-1.0, -0.5, 0.0, 0.8, 1.0]])
    small = torch.tensor([[0.5, 1.2, -0.7, 0.1, -1.5]])
    assert torch.allclose(condition_input(a0, small), a0 + small)  # all within the trained range
    t = torch.linspace(-6, 6, 1201)
    bent = condition_input(torch.zeros_like(t), t)
    assert bool((bent.abs() <= CONDITION_LIMIT).all())
    assert bool((bent.diff() >= 0).all())
    reach = t.abs() <= 3  # as far as a slider at +-2 of a step 2 goes from the far end: always more
    assert bool((bent[reach].diff() > 0).all())
    assert bool((bent.diff() < 1.01 * t.diff()).all())  # no jump anywhere, slope at most 1
    near = torch.tensor([0.999, 1.001])
    assert float(condition_input(torch.zeros(2), near).diff()) == pytest.approx(0.002, rel=0.01)
    assert float(condition_input(torch.tensor(-1.0), torch.tensor(4.0))) > 1.4  # +2 of a step 2: near the limit
    assert torch.equal(condition_input(a0, 3 * small, limit=float("inf")), a0 + 3 * small)


def test_a_slider_at_its_end_keeps_the_decoders_input_within_the_limit(conditioned: Engine,
                                                                       face_photo: Path) -> None:
    s, _ = open_session(conditioned, face_photo)
    assert s.a0 is not None
    before = s.composite()
    s.set_sliders({"eyeglasses": 2.0, "smiling": -2.0})
    assert s.a is not None
    assert bool((s.a.abs() <= CONDITION_LIMIT).all())
    assert float(s.a[0, 1]) > float(s.a0[0, 1])
    assert float(s.a[0, 0]) < float(s.a0[0, 0])
    assert not np.array_equal(s.composite(), before)


def test_condition_sliders_survive_a_session_file(conditioned: Engine, face_photo: Path, tmp_path: Path) -> None:
    s, faces = open_session(conditioned, face_photo)
    s.set_sliders({"smiling": -1.0, "pc1": 0.5})
    s.commit()
    save_session(s, tmp_path / "c.npe", faces, 0)
    again, _, _ = load_session(conditioned, tmp_path / "c.npe")
    assert again.sliders == s.sliders
    assert np.array_equal(again.composite(), s.composite())


def test_npe_edit_and_info_with_a_conditioned_model(tiny_conditioned_model_dir: Path, face_photo: Path,
                                                    tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.png"
    assert main(["edit", str(face_photo), "-o", str(out), "--weights", str(tiny_conditioned_model_dir),
                 "--attr", "smiling=1.5"]) == 0
    assert out.exists()
    capsys.readouterr()
    assert main(["info", "--weights", str(tiny_conditioned_model_dir)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [(s["name"], s["kind"]) for s in info["sliders"]] == [
        ("smiling", "condition"), ("eyeglasses", "condition"), ("pc1", "principal")]


def test_npe_attributes_keeps_the_better_judged_way_to_move_each_conditioned_attribute(
        tiny_conditioned_model_dir: Path, tmp_path: Path, face_photo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each attribute the decoder takes is judged three ways, as a slider on that input, as a latent
    direction, and as both moved together; the best stays, the others are reported as passed over.
    Here the judge's figures are tilted: smiling's input and latent together and eyeglasses' direction
    add the attribute to more faces, but eyeglasses' direction leaves a coloured mark, which hides it,
    so its weak input stays (its input and latent together, as weak, lose the tie)."""
    from engine.tools import attribute_learning
    from tests.test_train import make_cache

    data = make_cache(tmp_path / "data", n=240, size=CONDITIONED.resolution)
    cache = data / f"aligned-{CONDITIONED.resolution}"
    rng = np.random.default_rng(6)
    smiling, eyeglasses = rng.choice(np.array([-1, 1], np.int8), (2, 240))
    male = np.where(rng.random(240) < 0.8, smiling, -smiling).astype(np.int8)  # correlated: smiling holds male
    np.save(cache / "labels.npy", np.stack([smiling, eyeglasses, male], 1))
    meta = json.loads((cache / "meta.json").read_text())
    meta["attribute_names"] = ["Smiling", "Eyeglasses", "Male"]
    (cache / "meta.json").write_text(json.dumps(meta))
    model = tmp_path / "model"
    shutil.copytree(tiny_conditioned_model_dir, model)
    judged = attribute_learning.judge_sliders
    better = {("smiling", "both"), ("eyeglasses", "direction")}

    def way(a: Attribute) -> str:
        return "both" if a.latent_step else a.kind.value

    def tilted(engine: Engine, attrs: AttributeSet, *args: object, **kw: object) -> dict[str, dict[str, float]]:
        report = judged(engine, attrs, *args, **kw)  # type: ignore[arg-type]
        for a in attrs.attributes:  # the inputs not tilted up are weak (at the slider's end), the directions hidden
            if a.name in report:
                up = (a.name, way(a)) in better
                end = 0.95 if up else 0.5 if a.kind is SliderKind.CONDITION else 0.2
                report[a.name].update(flip_to_positive=0.9 if up else 0.2, flip_to_positive_at_slider_end=end,
                                      judge_false_positive_before=0.1)
        return report
    measured = attribute_learning.colour_against_real

    def marked(engine: Engine, attrs: AttributeSet, *args: object, **kw: object) -> dict[str, object]:
        colour = measured(engine, attrs, *args, **kw)  # type: ignore[arg-type]
        for a in attrs.attributes:  # eyeglasses' direction leaves a coloured band where the frames go
            if a.name in colour:  # (the tiny random decoder's own colours set aside)
                mark = 9.3 if (a.name, a.kind) == ("eyeglasses", SliderKind.DIRECTION) else 0.0
                colour[a.name]["chroma_excess_at_+1"] = mark  # type: ignore[index]
        return colour
    monkeypatch.setattr(attribute_learning, "judge_sliders", tilted)
    monkeypatch.setattr(attribute_learning, "colour_against_real", marked)
    assert main(["attributes", "--data", str(data), "--weights", str(model), "--device", "cpu"]) == 0
    attrs = AttributeSet.load(model, CONDITIONED.latent_dim)
    kinds = {a.name: (way(a), a.condition, a.quality) for a in attrs.attributes if a.kind is not SliderKind.PRINCIPAL}
    # the direction adds eyeglasses to more faces than the input, but its mark hides it: the input stays
    assert kinds == {"smiling": ("both", 0, "good"), "eyeglasses": ("condition", 1, "weak"),
                     "male": ("direction", -1, "hidden")}
    doc = json.loads((model / "attributes.json").read_text())
    assert {n: r["flip_to_positive"] for n, r in doc["evaluation"].items()} == {
        "smiling": 0.9, "eyeglasses": 0.2, "male": 0.2}  # the report of the slider kept
    assert doc["evaluation"]["eyeglasses"]["chroma_excess_at_+1"] == 0.0
    assert doc["passed_over"]["eyeglasses"][-1]["chroma_excess_at_+1"] == 9.3
    assert {n: [("both" if "latent_step" in r else r["kind"], r["flip_to_positive"]) for r in rs]
            for n, rs in doc["passed_over"].items()} == {
        "smiling": [("condition", 0.2), ("direction", 0.2)], "eyeglasses": [("both", 0.2), ("direction", 0.9)]}
    # every slider keeps its latent direction, the input one too (for the sliders that hold it fixed)
    assert bool((attrs.directions[:3].norm(dim=1) > 0.99).all())
    # in the editor, the one moves the decoder's input and the other the latent
    s, _ = open_session(Engine.load(model, "cpu"), face_photo)
    assert s.a0 is not None
    z0, a0 = s.z.clone(), s.a.clone()
    s.set_sliders({"male": 1.0})
    assert torch.equal(s.a, a0)
    assert not torch.allclose(s.z, z0)
    s.set_sliders({"male": 0.0, "eyeglasses": 1.0})
    assert torch.allclose(s.z, z0)
    assert s.a[0, 1] > a0[0, 1] + 1
    s.set_sliders({"eyeglasses": 0.0, "smiling": 1.0})  # and the one kept for both moves both
    assert s.a[0, 0] > a0[0, 0] + 1
    assert torch.allclose(s.z - z0, attrs.get("smiling").latent_step * attrs.direction("smiling", s.hold), atol=1e-5)
    # holding what its direction holds: with the hold on, its latent move leaves male's direction be
    assert attrs.get("smiling").default_hold == ("male",)
    assert s.hold
    assert abs(float((s.z - z0).flatten() @ attrs.directions[attrs.index("male")])) < 1e-4


def test_npe_info_names_each_sliders_judged_quality(model_with_a_failed_slider: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--weights", str(model_with_a_failed_slider)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["resolution"] == 32
    assert {s["name"]: s["quality"] for s in info["sliders"]} == {
        "smiling": "good", "eyeglasses": "failing", "pc1": "good"}
