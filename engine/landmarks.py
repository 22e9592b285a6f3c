"""A small eye-landmark regressor that refines the cascade's eye estimates.

It looks at a 64x64 grey crop cut out with the current estimate of the alignment and
answers where the two eye centres really are in that crop. Two or three rounds (crop,
predict, re-fit the transform) converge from a rough face box to the template.

Training labels come from aligned CelebA, whose eye centres sit at one known position
(``align.CELEBA_ALIGNED_EYES``, spread about 1.5 px), under random similarity
perturbations: the perturbation is known, so the eyes' position in the perturbed crop is
known too. ``npe landmarks --data DIR`` trains it; the weights ship in ``pretrained/``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from engine import align

INPUT = 64
ROUNDS = 3
WEIGHTS = "landmarks.safetensors"


class EyeNet(nn.Module):
    """(N, 1, 64, 64) grey crop in [-1, 1] -> (N, 4): eye offsets from the template, in crop units."""

    def __init__(self, width: int = 24) -> None:
        super().__init__()
        chans = [1, width, 2 * width, 4 * width, 8 * width]
        layers: list[nn.Module] = []
        for a, b in zip(chans[:-1], chans[1:], strict=False):
            layers += [nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU(inplace=True),
                       nn.Conv2d(b, b, 3, stride=2, padding=1), nn.BatchNorm2d(b), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)  # 64 -> 4
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(chans[-1] * 16, 128), nn.ReLU(inplace=True),
                                  nn.Linear(128, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise OSError(f"cannot read {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _crop_gray(pixels: np.ndarray, transform: np.ndarray) -> np.ndarray:
    gray = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY) if pixels.ndim == 3 else pixels
    crop = align.warp_to_crop(gray[..., None], transform, INPUT)[..., 0]
    crop = cv2.equalizeHist(crop)
    return crop.astype(np.float32) / 127.5 - 1.0


class EyeRefiner:
    """Iterative refinement of eye positions with an ``EyeNet``."""

    def __init__(self, net: EyeNet) -> None:
        self.net = net.eval().requires_grad_(False)

    @torch.inference_mode()
    def refine(self, pixels: np.ndarray, eyes: np.ndarray, rounds: int = ROUNDS) -> np.ndarray:
        eyes = np.asarray(eyes, dtype=np.float64)
        base = align.template_points(INPUT)
        for _ in range(rounds):
            t = align.eyes_to_crop(eyes, INPUT)
            x = torch.from_numpy(_crop_gray(pixels, t))[None, None]
            offset = self.net(x)[0].double().numpy().reshape(2, 2) * INPUT
            eyes = align.apply(align.invert(t), base + offset)
        return eyes


_refiner: list[EyeRefiner | None] = []  # loaded once: [refiner] or [None]


def default_refiner() -> EyeRefiner | None:
    """The shipped refiner, or None when its weights are absent (the cascade alone is used)."""
    if not _refiner:
        from engine.checkpoint import DEFAULT_MODEL_DIR, ModelError, read_tensors

        path = Path(os.environ.get("NPE_LANDMARKS", DEFAULT_MODEL_DIR / WEIGHTS))
        try:
            meta = json.loads(path.with_suffix(".json").read_text())
            net = EyeNet(int(meta.get("width", 24)))
            net.load_state_dict(read_tensors(path))
            _refiner.append(EyeRefiner(net))
        except (OSError, ValueError, ModelError, RuntimeError, KeyError):
            _refiner.append(None)
    return _refiner[0]


# ---- training ----------------------------------------------------------------------

def _perturbation(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random similarity about the crop centre: +-35 degrees, 0.75-1.3x, +-15% shift."""
    ang = np.deg2rad(rng.uniform(-35, 35))
    s = np.exp(rng.uniform(np.log(0.75), np.log(1.3)))
    c = np.array([size / 2 - 0.5, size / 2 - 0.5])
    rot = s * np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    shift = rng.uniform(-0.15, 0.15, 2) * size
    return np.hstack([rot, (c - rot @ c + shift)[:, None]])


def _compose(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a after b."""
    return (np.vstack([a, [0, 0, 1]]) @ np.vstack([b, [0, 0, 1]]))[:2]


def make_examples(images: list[np.ndarray], rng: np.random.Generator, per_image: int) -> tuple[np.ndarray, np.ndarray]:
    """Perturbed crops of aligned CelebA images and their eye offsets."""
    xs, ys = [], []
    base = align.template_points(INPUT)
    for img in images:
        truth = align.CELEBA_ALIGNED_EYES * img.shape[1] / 178.0
        t_true = align.eyes_to_crop(truth, INPUT)
        for _ in range(per_image):
            t = _compose(_perturbation(rng, INPUT), t_true)
            crop = _crop_gray(img, t)
            if rng.random() < 0.5:  # mirror: the eyes swap roles
                crop = crop[:, ::-1].copy()
                eyes = align.apply(t, truth)
                eyes = np.array([[INPUT - 1 - eyes[1, 0], eyes[1, 1]], [INPUT - 1 - eyes[0, 0], eyes[0, 1]]])
            else:
                eyes = align.apply(t, truth)
            xs.append(crop)
            ys.append(((eyes - base) / INPUT).ravel())
    return np.stack(xs)[:, None].astype(np.float32), np.stack(ys).astype(np.float32)


def train_landmarks(data_dir: Path, out_dir: Path, steps: int = 3000, batch: int = 64, seed: int = 0,
                    log: bool = True) -> Path:
    from tqdm import tqdm

    from engine.data import _held_out, list_items

    items, _ = list_items(data_dir, ("celeba",))
    train_items = [it for it in items if not _held_out(it.identity)]
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    net = EyeNet()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    bar = tqdm(range(steps), disable=not log, desc="training eye landmarks")
    for _step in bar:
        pick = rng.choice(len(train_items), batch // 4, replace=False)
        imgs = [_read_rgb(data_dir / train_items[i].file) for i in pick]
        x, y = make_examples(imgs, rng, 4)
        loss = nn.functional.smooth_l1_loss(net(torch.from_numpy(x)), torch.from_numpy(y), beta=0.01)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out_dir / WEIGHTS))
    (out_dir / WEIGHTS).with_suffix(".json").write_text(json.dumps(
        {"format_version": 1, "width": 24, "input": INPUT, "rounds": ROUNDS, "steps": steps,
         "trained_on": "aligned CelebA (training identities), random similarity perturbations"}, indent=2) + "\n")
    return out_dir / WEIGHTS
