"""Training the hair detail network (engine.core.detail): ``npe detail --data DIR --out RUN``.

Data: the aligned full-size CelebA photos (178x218) of the training identities, each beside
the face model's rendition of it (its 64-px crop encoded, decoded and put back into CelebA's
frame: what the editor shows of a stroke). Each step cuts random 64x64 patches of the forehead
band, half of them from photos CelebA labels Bangs, and asks the network for the photo's
detail over the rendition. A patch critic sees the rendition beside a detail, the photo's or
the network's, and the network learns to be taken for the photo (hinge loss, spectral norm on
the critic) while staying near it (L1, ``--l1``).

The run folder keeps the pairs (``pairs.npz``), ``state.safetensors`` + ``state.json`` (both
networks, both optimisers, the step), written every ``--save-every`` seconds; ``--resume``
continues it. The shippable weights (``detail.safetensors`` + ``detail.json``) are written
beside them at each save.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from engine.core import align
from engine.core.checkpoint import LoadedModel, ModelError
from engine.core.detail import INPUT_SIGMA, WEIGHTS, DetailNet, band, load_detail
from engine.core.images import atomic_write, load_photo, to_tensor, to_uint8
from engine.core.model_folder import ModelFolder
from engine.tools.data import _held_out, list_items

PATCH = 64
# The forehead band of an aligned 178x218 CelebA photo (eyes at y 112): where fringes are.
BAND = (28, 118, 24, 154)  # y0, y1, x0, x1


def rendition_pairs(data: Path, model: LoadedModel, limit: int | None = None) -> tuple[np.ndarray, np.ndarray,
                                                                                          np.ndarray]:
    """The forehead bands (N, 90, 130, 3 uint8) of the training identities' full-size CelebA
    photos, the same bands of the face model's rendition of each (its crop encoded, decoded and
    put back into CelebA's frame, as the editor's view of a stroke is), and which are labelled
    Bangs (N,) bool. No held-out person."""
    items, names = list_items(data, ("celeba",))
    bangs = names.index("Bangs")
    size = model.config.resolution
    to_crop = align.similarity_from_points(align.CELEBA_ALIGNED_EYES, align.template_points(size))
    y0, y1, x0, x1 = BAND
    photos, renditions, labels = [], [], []
    for it in items:
        if it.attrs is None or _held_out(it.identity):
            continue
        px = load_photo(data / it.file).pixels
        if px.shape[:2] != (218, 178):
            continue
        crop = to_tensor(align.warp_to_crop(px, to_crop, size))
        with torch.inference_mode():
            recon = model.model.decode(model.model.encode(crop), model.model.attributes_of(crop))
        back = cv2.warpAffine(to_uint8(recon[0]), align.invert(to_crop), (178, 218), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)
        photos.append(px[y0:y1, x0:x1])
        renditions.append(back[y0:y1, x0:x1])
        labels.append(it.attrs[bangs] > 0)
        if limit and len(photos) >= limit:
            break
    if not any(labels):
        raise ValueError(f"no full-size CelebA photos labelled Bangs in {data}")
    return np.stack(photos), np.stack(renditions), np.array(labels)


class PatchCritic(nn.Module):
    """(N, 6, 64, 64): the model's rendition of a patch and the detail over it -> (N, 1, 8, 8)
    realness scores."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        sn = nn.utils.spectral_norm
        act = nn.LeakyReLU(0.2, inplace=True)
        w = width
        self.net = nn.Sequential(
            sn(nn.Conv2d(6, w, 3, padding=1)), act,
            sn(nn.Conv2d(w, 2 * w, 4, stride=2, padding=1)), act,
            sn(nn.Conv2d(2 * w, 4 * w, 4, stride=2, padding=1)), act,
            sn(nn.Conv2d(4 * w, 4 * w, 4, stride=2, padding=1)), act,
            sn(nn.Conv2d(4 * w, 1, 3, padding=1)))

    def forward(self, rendition: torch.Tensor, detail: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([rendition, detail * 4.0], 1))


@dataclass
class DetailOptions:
    data: Path
    out: Path
    steps: int = 20000
    batch: int = 16
    lr: float = 2e-4
    width: int = 24
    resume: bool = False
    save_every: float = 600.0
    seed: int = 0
    sigma: float = INPUT_SIGMA  # the blur that parts fine detail from the rest, where the editor uses it
    l1: float = 3.0  # the weight of staying near the photo (L1), beside the critic's
    weights: str | None = None  # the face model whose renditions are learned from (default: pretrained/)
    # A new run's network starts from these detail weights (a detail.safetensors, or a model folder
    # holding one) instead of from scratch: a detail network moved onto a new face model's renditions.
    init_from: str | None = None


def _batch(photos: torch.Tensor, renditions: torch.Tensor, bangs: torch.Tensor, n: int,
           gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n random 64x64 patches of photos and the same of their renditions, in [-1, 1], half of
    them from photos labelled Bangs, mirrored at random."""
    with_bangs, without = torch.nonzero(bangs)[:, 0], torch.nonzero(~bangs)[:, 0]
    if not len(without):  # every photo has bangs
        without = with_bangs
    half = n // 2
    idx = torch.cat([with_bangs[torch.randint(len(with_bangs), (half,), generator=gen)],
                     without[torch.randint(len(without), (n - half,), generator=gen)]])
    h, w = photos.shape[1:3]
    ys = torch.randint(h - PATCH + 1, (n,), generator=gen)
    xs = torch.randint(w - PATCH + 1, (n,), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5

    def cut(images: torch.Tensor) -> torch.Tensor:
        p = torch.stack([images[i, y:y + PATCH, x:x + PATCH] for i, y, x in zip(idx, ys, xs, strict=True)])
        x = p.permute(0, 3, 1, 2).float() / 127.5 - 1
        x[flip] = x[flip].flip(-1)
        return x

    return cut(photos), cut(renditions)


def _save(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, object]) -> None:
    tmp = path.with_suffix(".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
    tmp.replace(path)
    atomic_write(path.with_suffix(".json"), (json.dumps(meta, indent=2) + "\n").encode())


def train_detail(opts: DetailOptions) -> Path:
    torch.manual_seed(opts.seed)
    opts.out.mkdir(parents=True, exist_ok=True)
    cache = opts.out / "pairs.npz"
    if cache.exists():
        with np.load(cache) as f:
            photos_np, renditions_np, bangs_np = f["photos"], f["renditions"], f["bangs"]
            face_model = str(f["face_model"]) if "face_model" in f else None
    else:
        model = ModelFolder.find(opts.weights).load_model("cpu")
        photos_np, renditions_np, bangs_np = rendition_pairs(opts.data, model)
        face_model = model.model_id
        np.savez(cache, photos=photos_np, renditions=renditions_np, bangs=bangs_np, face_model=np.array(face_model))
    meta: dict[str, object] = {
        "width": opts.width, "input_sigma": opts.sigma, "max_scale": 1.0, "face_model": face_model,
        "data": f"CelebA aligned full size (178x218), training identities: {len(photos_np)} photos "
                f"({int(bangs_np.sum())} labelled Bangs), each beside "
                f"{'a face model' if face_model is None else face_model}'s rendition of it",
        "licence": "CelebA: non-commercial research purposes only"}
    photos, renditions, bangs = (torch.from_numpy(a) for a in (photos_np, renditions_np, bangs_np))
    print(f"{len(photos)} photos, {int(bangs.sum())} with bangs", flush=True)
    g, d = DetailNet(opts.width), PatchCritic()
    opt_g = torch.optim.Adam(g.parameters(), opts.lr, betas=(0.5, 0.99))
    opt_d = torch.optim.Adam(d.parameters(), opts.lr, betas=(0.5, 0.99))
    step = 0
    state_file = opts.out / "state.safetensors"
    if opts.resume and state_file.exists():
        step = _read_state(state_file, g, d, opt_g, opt_d)
        print(f"resumed at step {step}", flush=True)
        written = (opts.out / WEIGHTS).with_suffix(".json")
        started = json.loads(written.read_text()).get("init_from") if written.exists() else None
        if started:  # where the run's network started, for the card
            meta["init_from"] = started
    elif opts.init_from:
        g.load_state_dict(_detail_weights(Path(opts.init_from), opts.width))
        meta["init_from"] = opts.init_from
        print(f"network from {opts.init_from}", flush=True)
    gen = torch.Generator().manual_seed(opts.seed + step)
    last_save, t0, first = time.monotonic(), time.monotonic(), step
    while step < opts.steps:
        x, r = _batch(photos, renditions, bangs, opts.batch, gen)
        real = x - r
        fake = g(r)
        # the critic: the photos' detail over the rendition against the network's
        loss_d = F.relu(1 - d(r, real)).mean() + F.relu(1 + d(r, fake.detach())).mean()
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        # the network: be taken for real, and stay near the photo
        loss_g = -d(r, fake).mean() + opts.l1 * (fake - real).abs().mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        step += 1
        if step % 50 == 0:
            e_real = band(real, opts.sigma).abs().mean().item()
            e_fake = band(fake, opts.sigma).abs().mean().item()
            print(f"step {step} d {loss_d.item():.3f} g {loss_g.item():.3f} fine detail: photo {e_real:.4f} "
                  f"answered {e_fake:.4f} {(time.monotonic() - t0) / (step - first):.2f} s/step", flush=True)
        if time.monotonic() - last_save > opts.save_every or step == opts.steps:
            _write_state(opts, g, d, opt_g, opt_d, step, meta)
            last_save = time.monotonic()
    return opts.out / WEIGHTS


def _detail_weights(path: Path, width: int) -> dict[str, torch.Tensor]:
    """A detail network's weights from a detail.safetensors or a model folder holding one, read
    by the editor's own loader (``load_detail``); they must be of this run's width."""
    file = path / WEIGHTS if path.is_dir() else path
    try:
        start = load_detail(file)
    except ModelError as e:
        raise SystemExit(f"npe detail: {e}") from None
    if start is None:
        raise SystemExit(f"npe detail: no detail weights at {file}")
    have = start.net.stem[0].out_channels
    if have != width:
        raise SystemExit(f"npe detail: {file} is a network of width {have}, this run's is {width}")
    return start.net.state_dict()


def _read_state(state_file: Path, g: DetailNet, d: PatchCritic, opt_g: torch.optim.Optimizer,
                opt_d: torch.optim.Optimizer) -> int:
    state = load_file(str(state_file))
    g.load_state_dict({k[2:]: v for k, v in state.items() if k.startswith("g.")})
    d.load_state_dict({k[2:]: v for k, v in state.items() if k.startswith("d.")})
    for name, opt in (("og", opt_g), ("od", opt_d)):
        sd = opt.state_dict()
        for pid in sd["param_groups"][0]["params"]:
            if f"{name}.{pid}.exp_avg" in state:
                sd["state"][pid] = {k: state[f"{name}.{pid}.{k}"] for k in ("step", "exp_avg", "exp_avg_sq")}
        opt.load_state_dict(sd)
    return int(json.loads(state_file.with_suffix(".json").read_text())["step"])


def _write_state(opts: DetailOptions, g: DetailNet, d: PatchCritic, opt_g: torch.optim.Optimizer,
                 opt_d: torch.optim.Optimizer, step: int, meta: dict[str, object]) -> None:
    tensors = {f"g.{k}": v for k, v in g.state_dict().items()}
    tensors.update({f"d.{k}": v for k, v in d.state_dict().items()})
    for name, opt in (("og", opt_g), ("od", opt_d)):
        for pid, st in opt.state_dict()["state"].items():
            for k in ("step", "exp_avg", "exp_avg_sq"):
                tensors[f"{name}.{pid}.{k}"] = torch.as_tensor(st[k])
    _save(opts.out / "state.safetensors", tensors, {"step": step})
    _save(opts.out / WEIGHTS, g.state_dict(), {**meta, "step": step})  # the weights to ship, with their provenance
    print(f"saved step {step}", flush=True)
