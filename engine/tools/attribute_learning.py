"""Learning the slider directions, and judging them.

``npe attributes --data DIR``
    1. encodes the training split of the aligned data with the model's encoder;
    2. per attribute, fits a linear boundary on the latents (Gaussian classes with the
       prior's identity covariance, see ``fit_direction``); the unit normal is the direction,
       and one slider unit is the distance between the mean latents of faces with and
       without the attribute; then each direction is turned, its length kept, towards where
       the decoder draws the attribute (``engine.tools.slider_guide``, ``--guide-steps``);
    3. finds correlated attributes (by their labels) to hold fixed by default
       (conditional editing, as in InterFaceGAN);
    4. adds the top principal directions of the latents (as GANSpace does) as unlabelled
       sliders;
    5. trains the judge (a small CNN attribute classifier on real images), scores every
       slider with it on held-out faces, and marks sliders that do not work well enough;
    6. for a conditioned decoder G(z, a), judges each attribute it takes both ways, as a slider
       on its input and as a latent direction, and keeps the better (``keep_better_kind``).

``npe eval --attributes --data DIR`` prints the judge's figures for the shipped sliders.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from tqdm import tqdm

from engine.core.attributes import SLIDER_RANGE, Attribute, AttributeSet, SliderKind, condition_input
from engine.core.edit import OPPONENT, blur, render_shift
from engine.core.images import to_tensor, to_uint8
from engine.core.judge import AttributeJudge, judge_scores, save_judge
from engine.core.model_folder import ModelFolder
from engine.core.pipeline import Engine
from engine.tools.data import AlignedFaces, aligned_cache
from engine.tools.slider_guide import NOT_TURNED, guide_direction, train_guide

if TYPE_CHECKING:  # evaluate imports this module
    from engine.tools.evaluate import EvalOptions

# slider name -> (label, CelebA column, sign)
SLIDERS: dict[str, tuple[str, str, int]] = {
    "smiling": ("Smiling", "Smiling", 1),
    "mouth_open": ("Mouth open", "Mouth_Slightly_Open", 1),
    "black_hair": ("Black hair", "Black_Hair", 1),
    "blond_hair": ("Blond hair", "Blond_Hair", 1),
    "brown_hair": ("Brown hair", "Brown_Hair", 1),
    "gray_hair": ("Gray hair", "Gray_Hair", 1),
    "bangs": ("Bangs", "Bangs", 1),
    "bald": ("Bald", "Bald", 1),
    "wavy_hair": ("Wavy hair", "Wavy_Hair", 1),
    "eyeglasses": ("Eyeglasses", "Eyeglasses", 1),
    "mustache": ("Mustache", "Mustache", 1),
    "beard": ("Beard", "No_Beard", -1),
    "male": ("Female / male", "Male", 1),
    "age": ("Young / old", "Young", -1),
    "heavy_makeup": ("Heavy makeup", "Heavy_Makeup", 1),
    "pale_skin": ("Pale skin", "Pale_Skin", 1),
}
HOLD_CANDIDATES = ("male", "age", "smiling")
HOLD_CORRELATION = 0.25
PCA_COUNT = 6
GOOD_LIFT, WEAK_LIFT = 0.4, 0.25
# A slider whose +1 step adds more colour where it draws (``colour_against_real``) than real photos
# with the attribute differ there, by more than this (``chroma_excess_at_+1``, CIELAB a*b* units, where
# about 2.3 is just noticeable), leaves a coloured mark rather than the attribute and is not shown.
# Measured on 300 held-out faces at 64 px over the whole region: the shipped model's sliders 0.2 or
# less (eyeglasses -0.8); a conditioned candidate's blue band for eyeglasses 9.3, its tinted pale skin
# 6.0, its bangs 1.8. Part by part (``region_parts``, the largest kept): the shipped model's 1.6 or
# less (eyeglasses 1.6); c64-dfg-4328, whose whole-region figures hid the tints seen in its grid, gray
# hair 4.2 (pink cheeks), blond 3.9, brown 4.1, mustache 3.8, pale skin 12.6. Every named slider is
# measured (FACE_SLIDERS over the face): the shipped model's smiling, mouth open, male, age and make-up
# 1.05 or less, bald 4.8 (hidden); a 2,000-step candidate's female/male 7.3 (blue eyes) and heavy make-up 12.9.
MARK_CHROMA_LIMIT = 3.0


# ---- the judge ------------------------------------------------------------------------

def train_judge(faces: object, epochs: int = 4, batch: int = 64, seed: int = 0) -> AttributeJudge:
    """Train on the labelled training split (CelebA rows only)."""
    labels = faces.labels()  # type: ignore[attr-defined]
    rows = np.nonzero(np.abs(labels).sum(1) > 0)[0]
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    judge = AttributeJudge(labels.shape[1], resolution=faces.resolution)  # type: ignore[attr-defined]
    opt = torch.optim.Adam(judge.parameters(), lr=2e-3)
    steps = epochs * (len(rows) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    judge.train()
    bar = tqdm(total=steps, desc="training the attribute judge")
    for _ in range(epochs):
        perm = rng.permutation(rows)
        for i in range(0, len(perm) - batch + 1, batch):
            idx = perm[i:i + batch]
            imgs = faces.images(idx)  # type: ignore[attr-defined]
            flip = rng.random(len(idx)) < 0.5
            imgs[flip] = imgs[flip, :, ::-1]
            x = to_tensor(imgs)
            y = torch.from_numpy((labels[idx] > 0).astype(np.float32))
            loss = F.binary_cross_entropy_with_logits(judge(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    return judge.eval()


# ---- directions ---------------------------------------------------------------------------

def encode_all(model: torch.nn.Module, faces: object, batch: int = 200) -> np.ndarray:
    out = []
    n = len(faces)  # type: ignore[arg-type]
    with torch.inference_mode():
        for i in range(0, n, batch):
            out.append(model.encode(to_tensor(faces.images(np.arange(i, min(n, i + batch))))).numpy())  # type: ignore
    return np.concatenate(out)


@dataclass
class Direction:
    name: str
    vector: np.ndarray
    step: float
    latent_accuracy: float


def fit_direction(latents: np.ndarray, positive: np.ndarray, name: str) -> Direction:
    """The linear boundary between faces with and without an attribute, modelling each
    class as a Gaussian with the prior's identity covariance: its normal is the difference
    of the class means, and one step is that difference's length (from the average face
    without the attribute to the average face with it).

    A logistic-regression normal separates the latents slightly better but leans on
    directions the decoder barely draws (measured on the 64-px model, 200 held-out faces:
    the judge saw blond hair added at +1 step 0.6 % of the time along the logistic normal,
    21 % along the mean difference; eyeglasses 0.5 % vs 14 %; smiling 41 % vs 58 %).
    Heavily regularised logistic regression converges to this same direction.
    """
    mu_pos, mu_neg = latents[positive].mean(0), latents[~positive].mean(0)
    diff = mu_pos - mu_neg
    step = float(np.linalg.norm(diff))
    d = diff / step
    proj = latents @ d
    threshold = float((mu_pos + mu_neg) @ d / 2)
    said = proj > threshold
    acc = float((said[positive].mean() + (~said[~positive]).mean()) / 2)  # balanced accuracy
    return Direction(name, d.astype(np.float32), step, acc)


def guide_sliders(engine: Engine, attrs: list[Attribute], vectors: list[np.ndarray], latents: np.ndarray,
                  labels: np.ndarray, names: list[str], photos: Callable[[np.ndarray], np.ndarray],
                  iterations: int) -> None:
    """Replace each latent slider's vector, but those in ``NOT_TURNED`` (most colours), by its
    direction turned through the decoder (``slider_guide``); ``labels`` and ``photos`` are the
    encoded faces' (rows of ``latents``)."""
    sliders = [(i, a) for i, a in enumerate(attrs) if a.kind is SliderKind.DIRECTION]
    if all(a.name in NOT_TURNED for _, a in sliders):
        return
    signed = np.stack([labels[:, names.index(SLIDERS[a.name][1])] * SLIDERS[a.name][2] for _, a in sliders], 1)
    guide = train_guide(photos, signed.astype(np.float32))
    decoder = engine.loaded.model.decode  # the loader froze its weights; a slider edit gets no photo map
    for k, (i, a) in enumerate(tqdm(sliders, desc="turning the sliders through the decoder", unit="slider")):
        if a.name in NOT_TURNED:
            continue
        without = np.nonzero(signed[:, k] < 0)[0]
        vectors[i] = guide_direction(decoder, guide, k, vectors[i], a.step, latents, photos, without,
                                     iterations, seed=k)


def label_holds(labels: np.ndarray, names: list[str]) -> dict[str, tuple[str, ...]]:
    """For each slider, the hold candidates whose labels correlate with it."""
    cols = {n: names.index(c) for n, (_, c, _) in SLIDERS.items() if c in names}
    signs = {n: s for n, (_, _, s) in SLIDERS.items()}
    known = np.abs(labels).sum(1) > 0
    lab = labels[known].astype(np.float32)
    holds: dict[str, tuple[str, ...]] = {}
    for a in cols:
        held = []
        for b in HOLD_CANDIDATES:
            if b == a or b not in cols:
                continue
            c = np.corrcoef(lab[:, cols[a]] * signs[a], lab[:, cols[b]] * signs[b])[0, 1]
            if abs(c) > HOLD_CORRELATION:
                held.append(b)
        holds[a] = tuple(held)
    return holds


def pca_directions(latents: np.ndarray, k: int = PCA_COUNT) -> list[Direction]:
    centred = latents - latents.mean(0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    std = s / np.sqrt(len(latents) - 1)
    return [Direction(f"pc{i + 1}", vt[i].astype(np.float32), float(std[i]), 0.0) for i in range(k)]


def slider_view(engine: Engine, attrs: AttributeSet, attr: Attribute, crops: torch.Tensor, z: torch.Tensor,
                a: torch.Tensor | None, value: float, hold: bool = True) -> torch.Tensor:
    """What the editor shows of ``crops`` with one slider at ``value``: a latent slider moves z,
    a CONDITION slider moves its entry of the decoder's attribute input ``a`` (the encoder's
    reading of the crops; None for a plain model), and z too where it has a ``latent_step``."""
    decoder = engine.loaded.model.decode  # a slider leaves the photo's feature map out (EditSession.kept_map)
    offset = attrs.offset({attr.name: value}, hold).view(1, -1)
    if attr.kind is SliderKind.CONDITION:
        if a is None:
            raise ValueError(f"slider {attr.name} moves the decoder's attribute input, but this model has none")
        shift = attrs.condition_offset({attr.name: value}, a.shape[1]).to(a).view(1, -1)
        return render_shift(decoder, crops, z, offset, a=a, a_moved=condition_input(a, shift))
    return render_shift(decoder, crops, z, offset, a=a)


def face_region(resolution: int) -> torch.Tensor:
    """(R, R) bool: an ellipse over the face (eyes to chin) in the template."""
    ys, xs = np.mgrid[0:resolution, 0:resolution].astype(np.float32)
    u = ((xs + 0.5) / resolution - 0.5) / 0.24
    v = ((ys + 0.5) / resolution - 0.62) / 0.3
    return torch.from_numpy(u * u + v * v <= 1)


def colour_speckle(change: torch.Tensor) -> float:
    """Mean |fine colour| of an image change (N, 3, R, R in [-1, 1]), in 0..255: its two opponent
    chroma channels less their blur over 2 pixels of a 64-pixel crop. Pixel-sized green and purple
    speckle, which the photo's paste-back enlarges into blotches, shows here; a smooth tint does not."""
    n, _, h, w = change.shape
    chroma = torch.einsum("kc,nchw->nkhw", OPPONENT.to(change), change)[:, 1:].reshape(n * 2, 1, h, w)
    return float((chroma - blur(chroma, 2.0 * w / 64)).abs().mean() * 127.5)


def _share(flags: torch.Tensor, among: np.ndarray) -> float:
    """The share of ``flags`` set among the faces selected by ``among`` (NaN when none are)."""
    return float(flags[torch.from_numpy(among)].float().mean()) if among.any() else float("nan")


def _labelled_faces(engine: Engine, test: object, n: int
                    ) -> tuple[np.ndarray, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Up to ``n`` faces of ``test`` with labels, evenly spaced: their labels, crops, latents and
    the model's reading of their attributes (None for a plain model)."""
    labels = test.labels()  # type: ignore[attr-defined]
    known = np.nonzero(np.abs(labels).sum(1) > 0)[0]
    rows = known[np.linspace(0, len(known) - 1, min(n, len(known))).astype(int)]
    crops = to_tensor(test.images(rows))  # type: ignore[attr-defined]
    model = engine.loaded.model
    with torch.inference_mode():
        return labels[rows], crops, model.encode(crops), model.attributes_of(crops)


def judge_sliders(engine: Engine, attrs: AttributeSet, judge: AttributeJudge, judge_names: list[str],
                  test: object, n: int = 300) -> dict[str, dict[str, float]]:
    """Per slider: flip rates both ways, other attributes' mean |score change|, outside pixel change."""
    lab, crops, z, read = _labelled_faces(engine, test, n)
    base = judge_scores(judge, crops)
    region = face_region(crops.shape[-1])
    report: dict[str, dict[str, float]] = {}
    for a in attrs.attributes:
        if a.kind is SliderKind.PRINCIPAL or a.name not in SLIDERS:
            continue
        _, col_name, sign = SLIDERS[a.name]
        col = judge_names.index(col_name)
        has = (lab[:, col] * sign) > 0
        up = slider_view(engine, attrs, a, crops, z, read, 1.0)
        down = slider_view(engine, attrs, a, crops, z, read, -1.0)
        s_up, s_down = judge_scores(judge, up), judge_scores(judge, down)
        s_max = judge_scores(judge, slider_view(engine, attrs, a, crops, z, read, SLIDER_RANGE))

        def pos(s: torch.Tensor, col: int = col, sign: int = sign) -> torch.Tensor:
            return (s[:, col] > 0.5) if sign > 0 else (s[:, col] < 0.5)

        flip_on = _share(pos(s_up), ~has)
        flip_on_max = _share(pos(s_max), ~has)
        flip_off = _share(~pos(s_down), has)
        others = [i for i in range(len(judge_names)) if i != col]
        other_change = float((s_up[:, others] - base[:, others]).abs().mean())
        outside = float((up - crops).abs().mean(1)[:, ~region].mean() / 2)
        speckle = colour_speckle(up - crops)
        base_rate = _share(pos(base), ~has)
        report[a.name] = {"flip_to_positive": round(flip_on, 3), "flip_to_negative": round(flip_off, 3),
                          "flip_to_positive_at_slider_end": round(flip_on_max, 3),
                          "judge_false_positive_before": round(base_rate, 3),
                          "other_attributes_change": round(other_change, 4), "outside_face_change": round(outside, 4),
                          "colour_speckle_255": round(speckle, 3),
                          "n_without": int((~has).sum()), "n_with": int(has.sum())}
        if attrs.held(a.name, True):  # the same slider with the correlated attributes free (the editor's other mode)
            for key, v in (("flip_to_positive_independent", 1.0),
                           ("flip_to_positive_at_slider_end_independent", SLIDER_RANGE)):
                s_free = judge_scores(judge, slider_view(engine, attrs, a, crops, z, read, v, hold=False))
                report[a.name][key] = round(_share(pos(s_free), ~has), 3)
    return report


def lift_of(r: dict[str, float], key: str = "flip_to_positive") -> float:
    """A slider report's share of faces given the attribute (``key``: at +1, or at the slider's
    end, which falls back to +1), less the judge's false positives before (none when unknown)."""
    base = r.get("judge_false_positive_before", 0.0)
    return r.get(key, r["flip_to_positive"]) - (0.0 if base != base else base)


def quality_of(r: dict[str, float]) -> str:
    """Judge a slider by how often it adds its attribute, above the judge's false positives:
    ``good`` when the +1 step does it for at least GOOD_LIFT of the faces without it, ``weak``
    when the slider's end (+SLIDER_RANGE) does it for at least WEAK_LIFT, else ``hidden``. A
    slider that leaves a coloured mark (``chroma_excess_at_+1`` above MARK_CHROMA_LIMIT, where
    it was measured: blue eyes for female/male, a green patch for bangs) is hidden whatever the
    judge reads: a user would see the mark, not the attribute.
    Removing is not the test: a 64-pixel edit loses fine attributes (a moustache, glasses)
    by blurring them, so the judge's negative flips overstate what the slider does."""
    lift = lift_of(r)
    lift_end = lift_of(r, "flip_to_positive_at_slider_end")
    if r.get("chroma_excess_at_+1", 0.0) > MARK_CHROMA_LIMIT:
        return "hidden"
    if lift == lift and lift >= GOOD_LIFT:
        return "good"
    if lift_end == lift_end and lift_end >= WEAK_LIFT:
        return "weak"
    return "hidden"


def judged_rank(r: dict[str, float]) -> tuple[int, float]:
    """How well a slider did with the judge, for comparing two ways of moving one attribute: its
    quality (good > weak > hidden), then how many more faces the +1 step gave the attribute than
    the judge's false positives."""
    lift = lift_of(r)
    return ({"good": 2, "weak": 1}.get(quality_of(r), 0), lift if lift == lift else -1.0)


def keep_better_kind(aset: AttributeSet, alternatives: list[tuple[dict[str, Attribute], dict[str, dict[str, float]]]],
                     report: dict[str, dict[str, float]]
                     ) -> tuple[AttributeSet, dict[str, dict[str, float]], dict[str, list[dict[str, object]]]]:
    """For each attribute a conditioned decoder takes, keep whichever slider the judge rated
    higher (``judged_rank``): one of the ``alternatives`` (sliders by name with the judge's report
    on them: on the decoder's input, or on the input and the latent together) or the latent
    direction (in ``aset``, judged in ``report``); a tie keeps the earliest, the latent direction
    last. Measured on 64-px models conditioned with the latent adversary (3,000 steps, 300
    held-out faces): on one, pale skin's direction was weak where its input was hidden; on the
    other the inputs won all 16 (such a latent holds little of the attributes; without the
    adversary it holds more, so the directions may win more often). A kept input slider keeps the latent
    direction's vector too, so that other sliders holding it fixed still project it out.
    Returns the new set, the report of the sliders kept and, by name, those passed over (each
    with its kind and, where it moves the latent too, its ``latent_step``)."""
    attrs, vectors = [], []
    kept = dict(report)
    passed_over: dict[str, list[dict[str, object]]] = {}
    latent = {a.name: i for i, a in enumerate(aset.attributes)}
    taken = {n for sliders, _ in alternatives for n in sliders}
    order = [n for n in SLIDERS if n in latent or n in taken] + [n for n in latent if n not in SLIDERS]
    for name in order:
        i = latent.get(name)
        ways = [(sliders[name], judged[name]) for sliders, judged in alternatives if name in sliders]
        if i is not None:
            ways.append((aset.attributes[i], report.get(name, {})))
        best = 0 if len(ways) == 1 else max(range(len(ways)), key=lambda k: (judged_rank(ways[k][1]), -k))
        attrs.append(ways[best][0])
        if ways[best][1]:
            kept[name] = ways[best][1]
        if len(ways) > 1:
            passed_over[name] = [{"kind": a.kind.value, **({"latent_step": a.latent_step} if a.latent_step else {}),
                                  **r} for k, (a, r) in enumerate(ways) if k != best]
        vectors.append(aset.directions[i] if i is not None else torch.zeros(aset.latent_dim))
    return AttributeSet(attrs, torch.stack(vectors)), kept, passed_over


def judged_with_marks(engine: Engine, attrs: AttributeSet, judge: AttributeJudge, judge_names: list[str],
                      test: object) -> dict[str, dict[str, float]]:
    """``judge_sliders``' report, with each measured slider's ``chroma_excess_at_+1`` from
    ``colour_against_real`` (on the same held-out faces), which ``quality_of`` reads."""
    report = judge_sliders(engine, attrs, judge, judge_names, test)
    for name, entry in colour_against_real(engine, attrs, test).items():
        if name in report:
            report[name]["chroma_excess_at_+1"] = entry["chroma_excess_at_+1"]  # type: ignore[index]
    return report


@dataclass
class AttributeOptions:
    """``npe attributes``: learn the slider directions (and the judge) for a model."""

    data: str
    out: str | None = None  # model folder to write to (default: the --weights folder)
    n: int = 0  # training faces to encode (0: all)
    retrain_judge: bool = False
    weights: str | None = None
    device: str = "auto"
    # turn each latent slider's direction through the decoder, against a guide classifier
    # (engine.tools.slider_guide), for this many Adam steps (0: the plain mean difference)
    guide_steps: int = 150


def learn_attributes(args: AttributeOptions) -> dict[str, object]:
    t0 = time.perf_counter()
    engine = Engine.load(args.weights, args.device)
    folder = ModelFolder.find(args.out) if args.out else engine.folder
    model_dir = folder.path
    res = engine.loaded.config.resolution
    cache = aligned_cache(Path(args.data), res)
    train = AlignedFaces(cache, split="train", sets=("celeba",))
    test = AlignedFaces(cache, split="test", sets=("celeba",))
    names = train.attribute_names
    labels = train.labels()
    keep = np.nonzero(np.abs(labels).sum(1) > 0)[0]
    if args.n:
        keep = keep[: args.n]
    latents = encode_all(engine.loaded.model, _Subset(train, keep))
    lab = labels[keep]
    holds = label_holds(lab, names)
    attrs, vectors = [], []
    conditioned = engine.loaded.config.attributes
    inputs: dict[str, Attribute] = {}  # a slider on the decoder's attribute input, where it takes one
    for name, (label, col, sign) in SLIDERS.items():
        if col in conditioned:
            # one step = from absent (-1) to present (+1), as one step of a latent slider is from the
            # average face without the attribute to the average face with it (measured: with a step
            # of 1, +1 left a face without the attribute near 0, "unknown", and the judge saw little)
            inputs[name] = Attribute(name, label, 2.0 * sign, kind=SliderKind.CONDITION,
                                     condition=conditioned.index(col), note="the decoder's attribute input")
        if col not in names:
            continue
        positive = lab[:, names.index(col)] * sign > 0
        if positive.sum() < 20 or (~positive).sum() < 20:
            continue
        d = fit_direction(latents, positive, name)
        attrs.append(Attribute(name, label, d.step, note=f"latent accuracy {d.latent_accuracy:.3f}",
                               default_hold=holds.get(name, ())))
        vectors.append(d.vector)
    if args.guide_steps:
        guide_sliders(engine, attrs, vectors, latents, lab, names, lambda rows: train.images(keep[rows]),
                      args.guide_steps)
    for d in pca_directions(latents):
        attrs.append(Attribute(d.name, f"Latent direction {d.name[2:]}", d.step, kind=SliderKind.PRINCIPAL,
                               note="principal direction of encoded training faces (unlabelled)"))
        vectors.append(d.vector)
    aset = AttributeSet(attrs, torch.from_numpy(np.stack(vectors)))

    if folder.judge_file.exists() and not args.retrain_judge:
        judge, judge_names = folder.load_judge()
    else:
        judge = train_judge(train)
        judge_names = names
    test_lab = test.labels()
    tk = np.nonzero(np.abs(test_lab).sum(1) > 0)[0][:2000]
    scores = judge_scores(judge, to_tensor(test.images(tk)))
    acc = {n: round(float(((scores[:, i] > 0.5).numpy() == (test_lab[tk, i] > 0)).mean()), 3)
           for i, n in enumerate(judge_names)}
    save_judge(judge, model_dir, judge_names, acc)
    report = judged_with_marks(engine, aset, judge, judge_names, test)
    passed_over: dict[str, list[dict[str, object]]] = {}
    if inputs:  # each way of moving a conditioned attribute is judged; the slider keeps the best
        on_inputs = AttributeSet(list(inputs.values()), torch.zeros(len(inputs), aset.latent_dim))
        alternatives = [(inputs, judged_with_marks(engine, on_inputs, judge, judge_names, test))]
        # a slider moving both holds what the direction holds: its latent move leaves the correlated attributes be
        both = {n: replace(a, latent_step=aset.get(n).step, default_hold=aset.get(n).default_hold,
                           note="the decoder's attribute input and the latent direction together")
                for n, a in inputs.items() if n in aset.names}
        if both:  # the input and the latent direction moved together
            on_both = AttributeSet(list(both.values()), torch.stack([aset.directions[aset.index(n)] for n in both]))
            alternatives.append((both, judged_with_marks(engine, on_both, judge, judge_names, test)))
        aset, report, passed_over = keep_better_kind(aset, alternatives, report)
    for a in aset.attributes:
        if a.name in report:
            r = report[a.name]
            a.quality = quality_of(r)
            if "flip_to_positive_independent" in r:
                a.quality_independent = quality_of({  # the same report, with the correlated attributes free
                    **r, "flip_to_positive": r["flip_to_positive_independent"],
                    "flip_to_positive_at_slider_end": r["flip_to_positive_at_slider_end_independent"]})
    aset.save(model_dir, model_id=engine.loaded.model_id, evaluation=report,
              judge_held_out_accuracy=acc, passed_over=passed_over)
    named = [a for a in aset.attributes if a.kind is not SliderKind.PRINCIPAL]
    return {"model_dir": str(model_dir), "sliders": {a.name: a.quality for a in named},
            "sliders_with_correlated_attributes_free": {
                a.name: a.quality_independent for a in aset.attributes if a.quality_independent},
            "pca": [a.name for a in aset.attributes if a.kind is SliderKind.PRINCIPAL], "evaluation": report,
            "passed_over": passed_over,
            "seconds": round(time.perf_counter() - t0, 1)}


class _Subset:
    """Rows of an AlignedFaces, by position."""

    def __init__(self, faces: object, rows: np.ndarray) -> None:
        self.faces, self.rows = faces, rows

    def __len__(self) -> int:
        return len(self.rows)

    def images(self, idx: np.ndarray) -> np.ndarray:
        return self.faces.images(self.rows[np.asarray(idx)])  # type: ignore[attr-defined]


def _template_box(resolution: int, x0: float, x1: float, y0: float, y1: float) -> torch.Tensor:
    """(R, R) bool: the pixels whose centres lie in a box of the aligned template, in fractions
    of the crop side (from x0, y0 up to but not including x1, y1)."""
    c = (np.arange(resolution, dtype=np.float32) + 0.5) / resolution
    return torch.from_numpy(((c[:, None] >= y0) & (c[:, None] < y1)) & ((c[None, :] >= x0) & (c[None, :] < x1)))


def hair_top_region(resolution: int) -> torch.Tensor:
    """(R, R) bool: the top of the head in the template, above the forehead (hair on most faces)."""
    return _template_box(resolution, 0.25, 0.75, 0.0, 0.22)


# Where each slider that is no colour draws its attribute in the template (the eyes sit at y 0.48,
# x 0.37 and 0.63: engine.core.align.TEMPLATE_EYES). A coloured mark there (a blue band for
# eyeglasses) differs from how real photos with the attribute differ in a* and b*.
MARK_REGIONS: dict[str, Callable[[int], torch.Tensor]] = {
    "eyeglasses": lambda r: _template_box(r, 0.22, 0.78, 0.40, 0.57),
    "bangs": lambda r: _template_box(r, 0.28, 0.72, 0.22, 0.40),
    "mustache": lambda r: _template_box(r, 0.35, 0.65, 0.64, 0.74),
    "beard": lambda r: _template_box(r, 0.28, 0.72, 0.66, 0.92),
}


# the sliders that change the face as a whole; their colour is measured over it (the others where
# they draw: MARK_REGIONS, or the top of the head for the hair's colour and kind)
FACE_SLIDERS = ("smiling", "mouth_open", "male", "age", "heavy_makeup", "pale_skin")


def _measured_region(name: str, resolution: int) -> torch.Tensor:
    """Where ``colour_against_real`` measures a slider's colour."""
    if name in MARK_REGIONS:
        return MARK_REGIONS[name](resolution)
    return face_region(resolution) if name in FACE_SLIDERS else hair_top_region(resolution)


def region_parts(region: torch.Tensor, rows: int = 2, cols: int = 3) -> list[torch.Tensor]:
    """``region`` (R, R bool) cut into up to rows x cols parts by its bounding box (left eye,
    bridge, right eye for eyeglasses' box); parts it does not reach are left out. Disjoint, and
    together the whole region."""
    ys, xs = torch.nonzero(region, as_tuple=True)
    if not len(ys):
        return []
    yb = torch.linspace(float(ys.min()), float(ys.max()) + 1, rows + 1)
    xb = torch.linspace(float(xs.min()), float(xs.max()) + 1, cols + 1)
    c = torch.arange(region.shape[0], dtype=torch.float32)
    parts = []
    for i in range(rows):
        for j in range(cols):
            inside = (((c[:, None] >= yb[i]) & (c[:, None] < yb[i + 1]))
                      & ((c[None, :] >= xb[j]) & (c[None, :] < xb[j + 1])))
            part = region & inside
            if part.any():
                parts.append(part)
    return parts


def _mean_lab(images: torch.Tensor, regions: list[torch.Tensor]) -> np.ndarray:
    """Mean CIELAB (L*, a*, b*) of each image (N, 3, R, R in [-1, 1]) over each region: (N, P, 3)."""
    rgb = to_uint8(images).astype(np.float32) / 255  # (N, R, R, 3)
    lab = np.stack([cv2.cvtColor(im, cv2.COLOR_RGB2Lab) for im in rgb])
    return np.stack([lab[:, r.numpy()].mean(1, dtype=np.float64) for r in regions], 1)


def chroma_excess(change: np.ndarray, real: np.ndarray) -> np.ndarray:
    """Per part (P, 3 CIELAB changes each): how much longer a slider's (a*, b*) change is than
    the real photos' difference there (P,). Taken part by part, a mark that is green on one eye
    and magenta on the other cannot cancel out in a mean over both."""
    return np.hypot(change[:, 1], change[:, 2]) - np.hypot(real[:, 1], real[:, 2])


def colour_against_real(engine: Engine, attrs: AttributeSet, test: object, n: int = 300) -> dict[str, object]:
    """Per named slider: the mean CIELAB change it makes where it draws (the eyes for
    eyeglasses and the other ``MARK_REGIONS``, the face for ``FACE_SLIDERS``, the top of the
    head for the hair's colour and kind) at +1 and +2, on held-out faces
    without the attribute, beside how held-out real photos with the attribute differ there from
    those without. A slider that tints (grey hair turning blue) or leaves a coloured mark (a blue
    band for eyeglasses) differs in a* and b*: ``chroma_excess_at_+1`` is the length of its (a*, b*)
    change at +1 less that of the real photos' difference (0 or below: no more colour than real),
    taken in each of the region's parts (``region_parts``, listed in ``chroma_excess_by_part``) and
    the largest kept, so a mark of two colours is not averaged away."""
    names = test.attribute_names  # type: ignore[attr-defined]
    lab, crops, z, read = _labelled_faces(engine, test, n)
    res = crops.shape[-1]
    out: dict[str, object] = {}
    for a in attrs.attributes:
        if a.name not in SLIDERS or a.kind is SliderKind.PRINCIPAL or SLIDERS[a.name][1] not in names:
            continue
        _, col, sign = SLIDERS[a.name]
        region = _measured_region(a.name, res)
        parts = region_parts(region)
        signed = lab[:, names.index(col)] * sign
        before = _mean_lab(crops, [region, *parts])  # (N, 1 + P, 3): the whole region, then its parts
        if not (signed > 0).any() or not (signed < 0).any():
            continue
        has, lacks = signed > 0, signed < 0
        real = before[has].mean(0) - before[lacks].mean(0)
        entry = {"real_with_less_without": np.round(real[0], 2).tolist(), "n_with": int(has.sum())}
        without = torch.from_numpy(lacks)
        a_without = None if read is None else read[without]
        change = {}
        for v in (1.0, SLIDER_RANGE):
            shown = slider_view(engine, attrs, a, crops[without], z[without], a_without, v)
            change[v] = (_mean_lab(shown, [region, *parts]) - before[lacks]).mean(0)
            entry[f"slider_at_{v:+g}"] = np.round(change[v][0], 2).tolist()
        by_part = chroma_excess(change[1.0][1:], real[1:])
        entry["chroma_excess_by_part"] = np.round(by_part, 2).tolist()
        entry["chroma_excess_at_+1"] = round(float(by_part.max()), 2)
        out[a.name] = entry
    return out


def evaluate_attributes(args: EvalOptions) -> dict[str, object]:
    engine = Engine.load(args.weights, args.device)
    res = engine.loaded.config.resolution
    cache = aligned_cache(Path(args.data), res)
    test = AlignedFaces(cache, split="test", sets=("celeba",))
    judge, names = engine.folder.load_judge()
    n = args.count()
    report = judge_sliders(engine, engine.attributes, judge, names, test, n=n)
    colour = colour_against_real(engine, engine.attributes, test, n=n)
    grid = Path(args.grid)
    write_attribute_grid(engine, test, grid)
    return {"n": min(n, len(test)), "attributes": report, "colour_lab": colour,
            "quality": {a.name: a.quality for a in engine.attributes.attributes if a.kind is not SliderKind.PRINCIPAL},
            "grid": str(grid)}


def write_attribute_grid(engine: Engine, test: object, path: Path, faces: int = 2,
                         values: tuple[float, ...] = (-2, -1, 0, 1, 2)) -> None:
    """Rows: attributes (for each of ``faces`` held-out faces), columns: slider values."""
    attrs = [a for a in engine.attributes.attributes if a.kind is not SliderKind.PRINCIPAL]
    idx = np.linspace(0, len(test) - 1, faces).astype(int)  # type: ignore[arg-type]
    crops = to_tensor(test.images(idx))  # type: ignore[attr-defined]
    with torch.inference_mode():
        z = engine.loaded.model.encode(crops)
        read = engine.loaded.model.attributes_of(crops)
    res = crops.shape[-1]
    cell = max(res, 96)
    label_w = 130
    sheet = Image.new("RGB", (label_w + cell * len(values) * faces, cell * len(attrs) + 20), (30, 30, 30))
    draw = ImageDraw.Draw(sheet)
    for c, v in enumerate(values * faces):
        draw.text((label_w + c * cell + cell // 2 - 10, 4), f"{v:+g}", fill=(220, 220, 220))
    for r, a in enumerate(attrs):
        draw.text((4, 20 + r * cell + cell // 2 - 6), a.label + ("*" if a.quality != "good" else ""),
                  fill=(220, 220, 220))
        for f in range(faces):
            for c, v in enumerate(values):
                a_f = None if read is None else read[f:f + 1]
                shown = slider_view(engine, engine.attributes, a, crops[f:f + 1], z[f:f + 1], a_f, v)
                tile = Image.fromarray(to_uint8(shown[0])).resize((cell, cell), Image.Resampling.BILINEAR)
                sheet.paste(tile, (label_w + (f * len(values) + c) * cell, 20 + r * cell))
    sheet.save(path)
