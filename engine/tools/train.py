"""Training: ``npe train --data DIR --out RUN_DIR``.

One step (batch x of aligned faces):
    mu, logvar = E(x); z = mu + sigma * eps; zp ~ N(0, I)
    xr, xs = G(z), G(zp)                                 reconstruction, sample
    E, G:  w_pix |x - xr| + w_feat |D_f(x) - D_f(xr)| + w_kl KL + w_adv CE(D(xr), D(xs) -> real)
    D:     CE(D(x) -> real, D(xr) -> reconstructed, D(xs) -> sampled)   (IAN's ternary loss)

Runs on CUDA when present, otherwise the CPU. Under ``torchrun`` every process trains on
its own shard of each batch and gradients are averaged by DistributedDataParallel (gloo
on the CPU, NCCL on GPUs). Checkpoints resume exactly: weights, optimiser state, EMA,
the step, and the random generator state are all saved (safetensors + JSON, no pickle).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from engine.core import checkpoint
from engine.core.device import pick_device
from engine.core.edit import colour_pair
from engine.core.images import to_tensor, to_uint8
from engine.core.model import AttributeClassifier, Discriminator, FaceModel, ModelConfig, intensities
from engine.tools.data import AlignedFaces, build_cache

REAL, RECONSTRUCTED, SAMPLED = 0, 1, 2
# the attributes that are a colour (TrainOptions.classifier_grey reads them from the colour image)
COLOUR_ATTRIBUTES = frozenset({"Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair", "Heavy_Makeup",
                               "Pale_Skin", "Rosy_Cheeks", "Wearing_Lipstick"})


COLOUR_CELLS = 8  # the colour term (w_colour) compares the edits' colours over this many cells a side by default


@dataclass
class TrainOptions:
    data: str = ""
    out: str = "runs/default"
    model: ModelConfig = field(default_factory=ModelConfig)  # the network; the same class loads it
    sets: str = "celeba,lfw"
    batch_size: int = 64
    steps: int = 100_000
    lr: float = 2e-4
    lr_decay_from: int = 0  # from this step the learning rate falls linearly to lr / 10 at `steps` (0: constant)
    beta1: float = 0.5
    w_pix: float = 3.0
    w_feat: float = 1.0
    w_kl: float = 3e-5
    w_adv: float = 0.1
    w_cls: float = 0.5  # conditioned models: the edit must show the attributes it was given (classifier C)
    # conditioned models: C as a network of its own that reads the images shrunk to this size, each
    # batch shifted by a few pixels (0: C is a head on the discriminator and reads them at full size)
    classifier_resolution: int = 0
    # C of its own reads every attribute but the colour ones (COLOUR_ATTRIBUTES) from a grey view
    # of the image, each image's channels mixed by random weights: a coloured mark (a cyan rim for
    # eyeglasses, a green glyph for bangs) then reads differently from image to image, and the
    # decoder has to show the attribute in light and shade, as photos do
    classifier_grey: bool = False
    # C of its own learns from real photos each nudged, within this much a pixel (on [-1, 1]), the
    # way that reads them worst (one signed-gradient step from a random start: Wong et al. 2020's
    # fast adversarial training). A classifier trained so reads what a person sees (Santurkar et
    # al. 2019: its gradients draw the attribute), so edits satisfy it by showing the attribute,
    # not by a faint pattern another classifier, the judge, does not read (0: plain photos)
    classifier_robust: float = 0.0
    # conditioned models: this fraction of each batch is edited one attribute at a time (one
    # attribute turned over, as a slider does) instead of taking another face's labels
    single_turn: float = 0.0
    # C of its own first learns the real photos' labels alone for this many batches, so that
    # the decoder's first edits are read by a classifier that knows the attributes
    classifier_warmup: int = 0
    # a model with a shortcut: the share of faces whose feature map the decoder gets none of in
    # training. Above 0, the other faces' maps also lose 0 to 3 random rectangles (``kept_regions``),
    # so that the latent still learns to draw the whole face: the editor fades the map out where the
    # brush reaches, and there a stroke moves the latent alone (0: the whole map always)
    shortcut_drop: float = 0.0
    # a conditioned model with a shortcut: its edits are decoded from z and the turned attributes
    # with no feature map at all, as the editor decodes a face while a slider is set
    # (EditSession.kept_map), so that the classifier's and the discriminator's pull on the edits
    # all goes to that path (off: the edits get the reconstructions' maps, where 1 - shortcut_drop
    # of them keep most of the photo)
    edits_without_map: bool = False
    # run the networks' forward passes under bfloat16 autocast (weights, optimiser state, losses
    # and the outputs passed between networks stay float32): 1.49x faster 64-px steps on 2 threads of a CPU
    # with AVX-512 BF16 (measured, see README), and on GPUs
    bf16: bool = False
    # conditioned models: Fader Networks' latent adversary. A critic of its own reads the attributes
    # from the latent z; the encoder is pushed to leave it no wiser than each attribute's share of
    # faces (the training set's), so that z carries who the person is but not the attributes, and the
    # decoder has to take them from its attribute input to reconstruct the photo (0: off)
    w_latent: float = 0.0
    # conditioned models: the edits' colour, cell by cell over a colour_cells-a-side grid, must change
    # as real photos' colour does with the attributes turned (``attribute_colour_shift``, fitted on the
    # training photos): an L1 term on the two opponent-colour channels (lightness left free, so dark
    # frames and dark hair cost nothing), against the tints and coloured marks a classifier can be
    # satisfied by (a blue band for eyeglasses, green bangs, red cheeks for make-up) (0: off)
    w_colour: float = 0.0
    # the colour term's grid, cells a side: 8 cells of 8 pixels at 64 px, about an eye's height; 16 parts each eye
    # from the bridge of eyeglasses and a moustache from the cheeks
    colour_cells: int = COLOUR_CELLS
    adv_ramp_steps: int = 2000
    ema: float = 0.999
    seed: int = 0
    threads: int = 0  # 0: torch's default
    device: str = "auto"
    log_every: int = 50
    image_every: int = 1000
    checkpoint_every: int = 500
    export_every: int = 2000
    resume: bool = False
    # a model folder to start from (its encoder and decoder; new layers start at zero), or a run
    # folder (its live encoder and decoder, and its discriminator and classifier)
    init_from: str = ""
    fade_steps: int = 2000  # a model grown to twice the resolution fades its new layers in over these steps
    # train for this many minutes of wall clock (0: off), start-up and the last export included:
    # the run measures its pace and sets `steps` to what fits, the decay start (`lr_decay_from`)
    # kept at the same share of the steps it trains; for a machine lent for a fixed time
    minutes: float = 0.0

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "model": self.model.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> TrainOptions:
        """Options as saved in a run (``options.json``, ``state.json``); runs saved before the
        network had its own ``model`` entry kept its settings flat, as comma strings."""
        known = {f.name for f in fields(cls)}
        opts = {k: v for k, v in d.items() if k in known and k != "model" and v is not None}
        model = d.get("model")
        if not isinstance(model, dict):
            model = {k: v for k, v in d.items() if k in ModelConfig.__dataclass_fields__}
        for k, v in list(model.items()):
            if isinstance(v, str):
                model[k] = tuple(int(x) for x in v.split(","))
        return cls(**opts, model=ModelConfig.from_dict(model))  # type: ignore[arg-type]


def device_batch(pixels: np.ndarray, flip: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (N, H, W, 3) faces as the networks' input on ``device``: float (N, 3, H, W) in [-1, 1],
    channels-last, the ``flip`` ones mirrored; the same numbers as ``to_tensor``. The bytes travel
    and are converted and mirrored there. On the lent H200, mirroring and converting on the host
    capped each run at 1,000-1,300 faces a second whatever its batch size. Measured here for a
    batch of 256 at 128 px, one thread: the host's work 98.7 -> 2.5 ms when the device is a GPU
    (the gather alone); 98.7 -> 43.6 ms when it is the CPU."""
    x = torch.from_numpy(pixels).to(device, non_blocking=True).permute(0, 3, 1, 2)  # NHWC bytes: channels-last
    mirrored = torch.from_numpy(flip).to(device, non_blocking=True)
    x = torch.where(mirrored[:, None, None, None], x.flip(-1), x)
    return x.float().div_(127.5).sub_(1.0).contiguous(memory_format=torch.channels_last)


class Trainer:
    def __init__(self, opts: TrainOptions) -> None:
        self.opts = opts
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device = pick_device(opts.device)
        if self.world > 1:
            if self.device.type == "cuda":
                local = int(os.environ.get("LOCAL_RANK", "0"))
                self.device = torch.device("cuda", local)
                torch.cuda.set_device(self.device)
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        if opts.threads > 0:
            torch.set_num_threads(opts.threads)
        if opts.batch_size % self.world:
            raise ValueError(f"batch size {opts.batch_size} does not split over {self.world} processes")
        self.out = Path(opts.out)
        # a resumed run takes its own weights (not --init-from's, whose folder may be gone)
        self.resuming = opts.resume and (self.out / "state.safetensors").exists()
        self.cfg = opts.model
        torch.manual_seed(opts.seed)
        # channels-last: 1.4x faster convolutions on the CPU (measured), fine on GPUs
        cl = torch.channels_last
        self.model = FaceModel(self.cfg).to(self.device).to(memory_format=cl)  # type: ignore[call-overload]
        separate = bool(self.cfg.attributes and opts.classifier_resolution)
        self.disc = Discriminator(self.cfg, classify=not separate).to(self.device).to(memory_format=cl)  # type: ignore[call-overload]
        self.classifier = (AttributeClassifier(len(self.cfg.attributes), opts.classifier_resolution)
                           .to(self.device).to(memory_format=cl) if separate else None)  # type: ignore[call-overload]
        self.colour_attributes = torch.tensor([name in COLOUR_ATTRIBUTES for name in self.cfg.attributes],
                                              dtype=torch.bool, device=self.device)
        self.critic = (LatentCritic(self.cfg.latent_dim, len(self.cfg.attributes)).to(self.device)
                       if self.cfg.attributes and opts.w_latent else None)
        self.ema = FaceModel(self.cfg).to(self.device).to(memory_format=cl)  # type: ignore[call-overload]
        self.ema.eval().requires_grad_(False)
        if opts.init_from and not self.resuming:
            self.grow_from(Path(opts.init_from))
        self.ema.load_state_dict(self.model.state_dict())
        betas = (opts.beta1, 0.999)
        self.opt_g = torch.optim.Adam(self.model.parameters(), lr=opts.lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=opts.lr, betas=betas)
        self.opt_c = (torch.optim.Adam(self.classifier.parameters(), lr=opts.lr, betas=betas)
                      if self.classifier is not None else None)
        self.opt_l = (torch.optim.Adam(self.critic.parameters(), lr=opts.lr, betas=betas)
                      if self.critic is not None else None)
        self.noise = torch.Generator(device=self.device)
        self.noise.manual_seed(opts.seed * 1000 + self.rank)
        self.step = 0
        self.enc: nn.Module
        self.dec: nn.Module
        self.disc_ddp: nn.Module
        if self.world > 1:
            self.enc = DDP(self.model.encoder)
            self.dec = DDP(self.model.decoder)
            self.disc_ddp = DDP(self.disc)
        else:
            self.enc, self.dec, self.disc_ddp = self.model.encoder, self.model.decoder, self.disc
        # the calls a training step makes; with --bf16 each runs under autocast and returns float32
        bf16 = opts.bf16 and native_bf16(self.device)
        if opts.bf16 and not bf16 and self.rank == 0:
            print(f"--bf16 ignored: {self.device} has no native bfloat16 (on a CPU: AVX-512 BF16 or AMX), where "
                  "autocast emulates it about 20x slower than float32; training in float32", file=sys.stderr)
        self.enc, self.dec, self.disc_ddp = (Autocast(m, bf16) for m in (self.enc, self.dec, self.disc_ddp))
        self.read_attributes = None if self.classifier is None else Autocast(self.classifier, bf16)
        self.read_latent = None if self.critic is None else Autocast(self.critic, bf16)

    def grow_from(self, folder: Path) -> None:
        """Start from a shipped model: every tensor of the same name and shape is taken; what
        the new network adds (the attribute input, a new residual conv) starts at zero. A model
        of half this resolution (``ModelConfig.fade_from``) gives its layers to the same layers
        one step deeper, and its colour and first layers to the fading paths. A run folder
        (``state.safetensors``) gives its live weights, and its discriminator and classifier too."""
        run_state = folder / "state.safetensors"
        if run_state.is_file():
            tensors = checkpoint.read_tensors(run_state)
            source = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        else:
            tensors, source = {}, checkpoint.read_tensors(folder / checkpoint.WEIGHTS_NAME)
        if self.cfg.fade_from:
            source = {_grown_name(k): v for k, v in source.items()}
        own = self.model.state_dict()
        taken = {k: v for k, v in source.items() if k in own and own[k].shape == v.shape}
        if not taken:
            raise ValueError(f"{folder} shares no weights with this network: nothing to grow from")
        self.model.load_state_dict(taken, strict=False)
        new = sorted(set(own) - set(taken))
        print(f"grown from {folder}: {len(taken)} tensors taken, {len(new)} new ({', '.join(new[:4])}...)",
              file=sys.stderr)
        for prefix, module in (("disc.", self.disc), ("classifier.", self.classifier), ("critic.", self.critic)):
            if module is None or self.cfg.fade_from:
                continue
            mine = module.state_dict()
            part = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            part = {k: v for k, v in part.items() if k in mine and mine[k].shape == v.shape}
            if part:
                module.load_state_dict(part, strict=False)
                print(f"  and its {prefix[:-1]}: {len(part)} of {len(mine)} tensors", file=sys.stderr)

    # ---- data -------------------------------------------------------------------
    def load_data(self) -> None:
        sets = tuple(self.opts.sets.split(","))
        cache = build_cache(Path(self.opts.data), self.cfg.resolution, sets)
        if self.world > 1:
            dist.barrier()
        self.train_set = AlignedFaces(cache, split="train", sets=sets)
        self.test_set = AlignedFaces(cache, split="test", sets=sets)
        missing = [a for a in self.cfg.attributes if a not in self.train_set.attribute_names]
        if missing:
            raise ValueError(f"the data has no labels for {', '.join(missing)}: a conditioned model needs CelebA")
        self.label_columns = [self.train_set.attribute_names.index(a) for a in self.cfg.attributes]
        known = self.train_set.labels(np.arange(len(self.train_set)))[:, self.label_columns]
        share = ((known > 0).sum(0) + 1) / ((known != 0).sum(0) + 2)  # what a blind reader says (Laplace)
        self.label_prior = torch.from_numpy(share.astype(np.float32)).to(self.device)
        if len(self.train_set) < self.opts.batch_size:
            raise ValueError(f"only {len(self.train_set)} training images for batch size {self.opts.batch_size}")
        shown = self.test_set if len(self.test_set) else self.train_set  # a pack's later part alone has none held out
        fixed = np.linspace(0, len(shown) - 1, 8).astype(int)
        self.fixed_x = to_tensor(shown.images(fixed)).to(self.device)
        g = torch.Generator().manual_seed(1234)
        self.fixed_z = torch.randn(16, self.cfg.latent_dim, generator=g).to(self.device)
        self.fixed_a = torch.from_numpy(shown.labels(fixed)[:, self.label_columns].astype(np.float32))
        self.fixed_a = self.fixed_a.to(self.device)
        self.colour_shift = (attribute_colour_shift(self.train_set, self.label_columns,
                                                   self.opts.colour_cells).to(self.device)
                             if self.cfg.attributes and self.opts.w_colour else None)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's shard of the batch for ``step`` and its attribute labels (N, K) in
        {-1, 0 unknown, +1}: a pure function of (seed, step)."""
        n, b = len(self.train_set), self.opts.batch_size
        per_epoch = n // b
        epoch, pos = divmod(step, per_epoch)
        perm = np.random.default_rng([self.opts.seed, epoch]).permutation(n)
        rows = perm[pos * b:(pos + 1) * b]
        shard = b // self.world
        rows = rows[self.rank * shard:(self.rank + 1) * shard]
        flip = np.random.default_rng([self.opts.seed, epoch, pos, 7]).random(b)[self.rank * shard:][:shard] < 0.5
        labels = self.train_set.labels(rows)[:, self.label_columns].astype(np.float32)
        return device_batch(self.train_set.images(rows), flip, self.device), torch.from_numpy(labels).to(self.device)

    # ---- one step -----------------------------------------------------------------
    def learning_rate(self, step: int) -> float:
        o = self.opts
        if not o.lr_decay_from or step < o.lr_decay_from or o.steps <= o.lr_decay_from:
            return o.lr
        frac = min(1.0, (step - o.lr_decay_from) / (o.steps - o.lr_decay_from))
        return o.lr * (1.0 - 0.9 * frac)

    @staticmethod
    def reconstruction_labels(a: torch.Tensor, read: torch.Tensor | None) -> torch.Tensor:
        """The decoder's attribute input for reconstructing the batch: the labels where they are
        known, and where they are not (LFW has none) what the encoder reads in the photo, 2p - 1,
        as an edit session starts from (not 0, which no photo is opened with)."""
        if read is None:
            return a
        return torch.where(a != 0, a, intensities(read).detach())

    def edited_labels(self, a: torch.Tensor) -> torch.Tensor:
        """AttGAN's edit: each face gets the labels of another face of the batch (a real, so
        plausible, combination; many attributes turn over at once); where those are unknown, its
        own. With ``single_turn``, that fraction of the faces (the batch's first rows) instead
        has one attribute, chosen at random, turned over, the others kept: a slider's edit (an
        unknown one is set present or absent at random)."""
        perm = torch.randperm(len(a), generator=self.noise, device=self.device)
        b = a[perm]
        b = torch.where(b != 0, b, a)
        m = int(round(self.opts.single_turn * len(a)))
        if m:
            k = torch.randint(0, a.shape[1], (m,), generator=self.noise, device=self.device)
            coin = torch.randint(0, 2, (m,), generator=self.noise, device=self.device).to(a.dtype) * 2 - 1
            rows = torch.arange(m, device=self.device)
            own = a[rows, k]
            b[:m] = a[:m]
            b[rows, k] = torch.where(own != 0, -own, coin)
        return b

    def classifier_view(self, x: torch.Tensor) -> torch.Tensor:
        """What C of its own reads: the batch shifted by up to 1/32 of its size (one random shift
        for the whole batch, edges repeated), so no pixel-exact pattern can speak to it. C then
        shrinks it to its own size."""
        r = x.shape[-1] // 32
        if r == 0:
            return x
        dy, dx = (int(v) for v in torch.randint(-r, r + 1, (2,), generator=self.noise, device=self.device))
        padded = F.pad(x, (r, r, r, r), mode="replicate")
        return padded[:, :, r + dy:r + dy + x.shape[-2], r + dx:r + dx + x.shape[-1]]

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """C of its own on a batch (``classifier_view``): (N, K) logits. With ``classifier_grey``
        the attributes that are not a colour are read from the view turned grey, each image's
        channels weighted at random (Dirichlet(1, 1, 1) weights)."""
        assert self.read_attributes is not None
        view = self.classifier_view(x)
        read = self.read_attributes(view)
        if not self.opts.classifier_grey:
            return read
        w = -torch.log(torch.rand((len(view), 3, 1, 1), generator=self.noise, device=self.device).clamp_min(1e-12))
        grey = (view * (w / w.sum(1, keepdim=True))).sum(1, keepdim=True).expand_as(view).contiguous()
        return torch.where(self.colour_attributes, read, self.read_attributes(grey))

    def classifier_lesson(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """The real photos C learns from this step: ``x`` itself, or with ``classifier_robust``
        each nudged the way C reads worst (``worst_nudge``)."""
        eps = self.opts.classifier_robust
        if not eps:
            return x
        return worst_nudge(lambda v: _masked_bce(self.classify(v), a), x, eps, self.noise)

    def set_fade(self, step: int) -> float:
        """A grown model's new layers: weight 0 at the start, 1 after ``fade_steps``."""
        alpha = min(1.0, step / max(1, self.opts.fade_steps)) if self.cfg.fade_from else 1.0
        for m in (self.model.encoder, self.model.decoder):
            m.fade.fill_(alpha)
        return alpha

    def train_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
        o = self.opts
        x, a = batch
        n = x.shape[0]
        fade = self.set_fade(self.step)
        conditioned = bool(self.cfg.attributes)
        lr = self.learning_rate(self.step)
        for opt in (self.opt_g, self.opt_d, self.opt_c, self.opt_l):
            for group in opt.param_groups if opt is not None else ():
                group["lr"] = lr
        mu, logvar, read, shortcut = self.enc(x)
        eps = torch.randn(mu.shape, generator=self.noise, device=self.device)
        z = mu + eps * torch.exp(0.5 * logvar)
        zp = torch.randn(mu.shape, generator=self.noise, device=self.device)
        # a shortcut carries the photo's feature map to its reconstruction (and edits); a sample has none
        photo = None if shortcut is None else photo_maps(shortcut, o.shortcut_drop, self.noise, edits=conditioned,
                                                         edits_without_map=o.edits_without_map)
        if conditioned:  # reconstruct with the true labels, sample with none, edit with turned ones
            b = self.edited_labels(a)
            given = self.reconstruction_labels(a, read)
            edit = torch.where(b != 0, b, given)
            out = self.dec(torch.cat([z, zp, z]), torch.cat([given, torch.zeros_like(a), edit]), photo)
        else:
            out = self.dec(torch.cat([z, zp]), None, photo)
        xr, xs, xe = out[:n], out[n:2 * n], out[2 * n:]

        # encoder + decoder
        self.disc.requires_grad_(False)
        logits, feats, attr = self.disc(torch.cat([x, xr, xs, xe]))
        if self.classifier is not None:
            self.classifier.requires_grad_(False)
            attr_edit = self.classify(xe)
        elif attr is not None:
            attr_edit = attr[3 * n:]
        pix = (x - xr).abs().mean()
        feat = torch.stack([(f[:n].detach() - f[n:2 * n]).abs().mean() for f in feats]).mean()
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1).mean()
        fool = torch.full((len(out),), REAL, device=self.device, dtype=torch.long)
        adv = F.cross_entropy(logits[n:], fool)
        ramp = min(1.0, (self.step + 1) / max(1, o.adv_ramp_steps))
        loss_g = o.w_pix * pix + o.w_feat * feat + o.w_kl * kl + ramp * o.w_adv * adv
        vals: dict[str, torch.Tensor] = {}
        if conditioned:  # the edits must show what they were given
            cls_g = _masked_bce(attr_edit, b)
            loss_g = loss_g + ramp * o.w_cls * cls_g
            vals["cls_g"] = cls_g
        if self.colour_shift is not None:  # (conditioned models) ... in the colours real photos change by
            colour = colour_mismatch(xe, xr, (edit - given) / 2, self.colour_shift)
            loss_g = loss_g + ramp * o.w_colour * colour
            vals["colour"] = colour
        if read is not None:  # the encoder learns the photo's attributes (a slider's starting point)
            read_loss = _masked_bce(read, a)
            loss_g = loss_g + read_loss
            vals["read"] = read_loss
        if self.critic is not None and self.read_latent is not None:  # z must tell the critic no more
            self.critic.requires_grad_(False)  # than each attribute's share of faces
            hide = _masked_guess(self.read_latent(z), a, self.label_prior)
            loss_g = loss_g + ramp * o.w_latent * hide
            vals["latent_g"] = hide
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()

        # discriminator (and, for a conditioned model, its classifier on the real photos' labels)
        self.disc.requires_grad_(True)
        logits_d, _, attr_d = self.disc_ddp(torch.cat([x, xr.detach(), xs.detach(), xe.detach()]))
        if self.classifier is not None:  # C of its own: it learns from the real photos alone (its
            self.classifier.requires_grad_(True)  # reading of the edits is the one the decoder just had)
            read_real, read_edit = self.classify(self.classifier_lesson(x, a)), attr_edit.detach()
        elif attr_d is not None:
            read_real, read_edit = attr_d[:n], attr_d[3 * n:]
        target = torch.cat([torch.full((len(t),), c, device=self.device, dtype=torch.long)
                            for t, c in ((x, REAL), (xr, RECONSTRUCTED), (xs, SAMPLED), (xe, SAMPLED))])
        loss_d = F.cross_entropy(logits_d, target)
        if conditioned:
            cls_d = _masked_bce(read_real, a)
            loss_d = loss_d + cls_d
            vals["cls_d"] = cls_d
            with torch.no_grad():  # does C read the turned attribute on the edits?
                turned = (b != a)
                vals["edit_read"] = ((read_edit > 0) == (b > 0))[turned].float().mean()
        if self.critic is not None and self.read_latent is not None:  # the critic learns to read z as it is now
            self.critic.requires_grad_(True)
            read_z = self.read_latent(z.detach())
            latent_d = _masked_bce(read_z, a)
            loss_d = loss_d + latent_d
            vals["latent_d"] = latent_d
            with torch.no_grad():  # nats per label the critic reads in z beyond the attributes' shares
                blind = _masked_bce(torch.logit(self.label_prior).expand_as(a), a)
                vals["latent_told"] = blind - latent_d
        self.opt_d.zero_grad(set_to_none=True)
        for opt in (self.opt_c, self.opt_l):
            if opt is not None:
                opt.zero_grad(set_to_none=True)
        loss_d.backward()
        for opt in (self.opt_d, self.opt_c, self.opt_l):
            if opt is not None:
                opt.step()

        with torch.no_grad():
            for pe, pm in zip(self.ema.parameters(), self.model.parameters(), strict=False):
                pe.lerp_(pm, 1 - o.ema)
            for be, bm in zip(self.ema.buffers(), self.model.buffers(), strict=False):
                be.copy_(bm)
            acc = (logits_d.argmax(1) == target).float().mean()
        vals.update({"pix": pix, "feat": feat, "kl": kl, "adv": adv, "d": loss_d, "d_acc": acc})
        if self.cfg.fade_from:
            vals["fade"] = torch.tensor(fade)
        return {k: float(v.detach()) for k, v in vals.items()}

    def warm_up_classifier(self) -> None:
        """``classifier_warmup`` steps of C alone on real photos (the run's first batches)."""
        if self.classifier is None or self.opt_c is None or not self.opts.classifier_warmup:
            return
        self.classifier.train().requires_grad_(True)
        correct = known = 0.0
        for i in tqdm(range(self.opts.classifier_warmup), desc="classifier", disable=self.rank != 0):
            x, a = self.batch(i)
            read = self.classify(self.classifier_lesson(x, a))
            loss = _masked_bce(read, a)
            self.opt_c.zero_grad(set_to_none=True)
            loss.backward()
            self.opt_c.step()
            if i >= self.opts.classifier_warmup - 50:
                correct += float(((read > 0) == (a > 0))[a != 0].float().sum())
                known += float((a != 0).sum())
        if self.rank == 0:
            print(f"classifier warmed up: {correct / max(known, 1):.3f} of the last 50 batches' labels read right",
                  file=sys.stderr)

    # ---- state --------------------------------------------------------------------
    def _optim_tensors(self, prefix: str, opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], object]:
        sd = opt.state_dict()
        tensors = {}
        for idx, st in sd["state"].items():
            for k, v in st.items():
                tensors[f"{prefix}.{idx}.{k}"] = v.detach().cpu().contiguous()
        return tensors, sd["param_groups"]

    def _modules_saved(self) -> list[tuple[str, nn.Module]]:
        named = [("model", self.model), ("disc", self.disc), ("ema", self.ema), ("classifier", self.classifier),
                 ("critic", self.critic)]
        return [(name, m) for name, m in named if m is not None]

    def _optimisers_saved(self) -> list[tuple[str, torch.optim.Optimizer]]:
        named = [("opt_g", self.opt_g), ("opt_d", self.opt_d), ("opt_c", self.opt_c), ("opt_l", self.opt_l)]
        return [(name, o) for name, o in named if o is not None]

    def save_state(self) -> None:
        if self.rank != 0:
            return
        tensors = {}
        for name, module in self._modules_saved():
            tensors.update({f"{name}.{k}": v.detach().cpu().contiguous() for k, v in module.state_dict().items()})
        groups = {}
        for name, opt in self._optimisers_saved():
            t, groups[f"groups_{name[-1]}"] = self._optim_tensors(name, opt)
            tensors.update(t)
        tensors["rng.noise"] = self.noise.get_state().cpu()
        tensors["rng.torch"] = torch.get_rng_state()
        tmp = self.out / "state.safetensors.tmp"
        save_file(tensors, str(tmp))
        os.replace(tmp, self.out / "state.safetensors")
        meta = {"step": self.step, **groups, "options": self.opts.to_dict()}
        (self.out / "state.json.tmp").write_text(json.dumps(meta))
        os.replace(self.out / "state.json.tmp", self.out / "state.json")

    def _load_optim(self, prefix: str, opt: torch.optim.Optimizer, groups: object,
                    tensors: dict[str, torch.Tensor]) -> None:
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, v in tensors.items():
            if key.startswith(prefix + "."):
                _, idx, name = key.split(".", 2)
                state.setdefault(int(idx), {})[name] = v
        opt.load_state_dict({"state": state, "param_groups": groups})

    def load_state(self) -> None:
        tensors = load_file(str(self.out / "state.safetensors"), device="cpu")
        meta = json.loads((self.out / "state.json").read_text())
        for name, module in self._modules_saved():
            p = name + "."
            module.load_state_dict({k[len(p):]: v for k, v in tensors.items() if k.startswith(p)})
        for name, opt in self._optimisers_saved():
            self._load_optim(name, opt, meta[f"groups_{name[-1]}"], tensors)
        self.noise.set_state(tensors["rng.noise"].to(self.noise.get_state().device))
        torch.set_rng_state(tensors["rng.torch"])
        self.step = int(meta["step"])

    # ---- outputs ------------------------------------------------------------------
    def averaged_model(self) -> FaceModel:
        """A copy of the EMA model with batch-norm statistics measured for its own weights.

        The running statistics of the live model do not fit the averaged weights (measured:
        held-out L1 0.344 with copied statistics, 0.119 recalibrated, 0.113 for the live
        model at step 2000), so they are re-estimated on training batches.
        """
        model = FaceModel(self.cfg).to(self.device)
        model.load_state_dict(self.ema.state_dict())
        rng = np.random.default_rng([self.opts.seed, self.step, 99])
        return recalibrate_batchnorm(model, lambda: self._random_batch(rng), drop=self.opts.shortcut_drop)

    def _random_batch(self, rng: np.random.Generator) -> torch.Tensor:
        rows = rng.choice(len(self.train_set), self.opts.batch_size, replace=False)
        return to_tensor(self.train_set.images(rows)).to(self.device)

    @torch.no_grad()
    def write_grids(self) -> None:
        """Rows: held-out faces, their reconstructions, 16 samples; for a conditioned model then
        one row per attribute (up to four): the faces with that attribute set to +1."""
        if self.rank != 0:
            return
        model = self.averaged_model()
        z, _, _, shortcut = model.encoder(self.fixed_x)
        conditioned = bool(self.cfg.attributes)
        recon = model.decode(z, self.fixed_a if conditioned else None, shortcut)
        samples = model.decode(self.fixed_z)
        rows = [torch.cat(list(self.fixed_x), 2), torch.cat(list(recon), 2),
                torch.cat(list(samples[:8]), 2), torch.cat(list(samples[8:]), 2)]
        for k in range(min(4, len(self.cfg.attributes))):
            a = self.fixed_a.clone()
            a[:, k] = 1.0
            rows.append(torch.cat(list(model.decode(z, a, shortcut)), 2))
        grid = to_uint8(torch.cat(rows, 1))
        Image.fromarray(grid).save(self.out / f"grid-{self.step:07d}.png")

    def export(self, name: str = "model") -> Path:
        return checkpoint.save_model(
            self.averaged_model(), self.out / name, model_id=f"{self.out.name}-{self.step}", trained_steps=self.step,
            trained_images=self.step * self.opts.batch_size, training_sets=self.opts.sets.split(","))

    # ---- loop ---------------------------------------------------------------------
    PACE_FROM, PACE_EVERY = 10, 50  # steps: the first ones compile and tune; then the pace is refitted this often

    @staticmethod
    def minutes_reserve(minutes: float) -> float:
        """Seconds of ``--minutes`` kept back for the last checkpoint and export."""
        return 10.0 + 1.8 * minutes

    def fit_to_minutes(self, t_start: float, pace_since: tuple[int, float], given: tuple[int, TrainOptions]) -> None:
        """``--minutes``: set ``steps`` to what the time left allows at the pace measured since
        ``pace_since`` (step, time), keeping back time for the last checkpoint and export. The
        decay start keeps its share of the steps that ``given`` (this invocation's first step
        and options as given) asked for; a run resumed inside its decay instead goes on from the
        learning rate it had (the decay's start moves so that the first step's rate is kept)."""
        o, now = self.opts, time.perf_counter()
        pace = (now - pace_since[1]) / max(1, self.step - pace_since[0])
        # the export re-estimates batch norm on 30 batches: about 15 steps' time (0.3 s on a GPU, minutes on a CPU)
        left = o.minutes * 60.0 - (now - t_start) - self.minutes_reserve(o.minutes) - 15 * pace
        steps = self.step + max(0, int(left / pace)) if left > 0 else self.step
        if self.world > 1:  # every process stops at the first's step
            t = torch.tensor([steps], device=self.device)
            dist.broadcast(t, 0)
            steps = int(t.item())
        first, asked = given
        decay = 0
        start, end = asked.lr_decay_from, asked.steps
        if start and end > start:
            if first <= start:
                decay = first + round((start - first) / (end - first) * (steps - first))
            else:  # resumed with the rate already falling: the share of the decay done stays done
                done = min(0.999, (first - start) / (end - start))
                decay = round((first - done * steps) / (1 - done)) or -1  # (0 would turn the decay off)
        if steps != o.steps:
            self.opts = replace(o, steps=steps, lr_decay_from=decay)

    def run(self) -> None:
        o = self.opts
        t_start = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        if self.resuming:
            self.load_state()
        if self.rank == 0:  # before any step; a resumed run appends what it was resumed with
            (self.out / "options.json").write_text(json.dumps(o.to_dict(), indent=2) + "\n")
            with (self.out / "options-history.jsonl").open("a") as fh:
                fh.write(json.dumps({"from_step": self.step, **o.to_dict()}) + "\n")
        self.load_data()
        if self.step == 0:
            self.warm_up_classifier()
        self.model.train()
        self.disc.train()
        bar = tqdm(total=o.steps, initial=self.step, disable=self.rank != 0, unit="step", dynamic_ncols=True)
        log = (self.out / "log.jsonl").open("a") if self.rank == 0 else None
        t0, seen = time.perf_counter(), 0
        sums: dict[str, float] = {}
        given, pace_since = (self.step, o), (self.step, t0)
        deadline = t_start + o.minutes * 60.0 - self.minutes_reserve(o.minutes)
        while self.step < o.steps:
            losses = self.train_step(self.batch(self.step))
            self.step += 1
            seen += o.batch_size
            now = time.perf_counter()
            if o.minutes and self.step - given[0] == self.PACE_FROM:
                pace_since = (self.step, now)
            late = now > deadline and self.world == 1  # several processes refit on the same steps only
            if o.minutes and (late or self.step - given[0] > self.PACE_FROM and self.step % self.PACE_EVERY == 0):
                self.fit_to_minutes(t_start, pace_since, given)
                if self.opts.steps != o.steps:
                    o = self.opts
                    bar.total = o.steps
                    if log is not None:
                        log.write(json.dumps({"step": self.step, "fitted_steps": o.steps,
                                              "lr_decay_from": o.lr_decay_from}) + "\n")
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v
            if self.step % o.log_every == 0 or self.step == o.steps:
                count = (self.step - 1) % o.log_every + 1
                avg = {k: v / count for k, v in sums.items()}
                rate = seen / (time.perf_counter() - t0)
                bar.set_postfix({k: f"{v:.3f}" for k, v in avg.items()} | {"img/s": f"{rate:.0f}"})
                if log is not None:
                    log.write(json.dumps({"step": self.step, "img_per_s": round(rate, 1), **avg}) + "\n")
                    log.flush()
                sums = {}
                t0, seen = time.perf_counter(), 0
            bar.update(1)
            if not all(math.isfinite(v) for v in losses.values()):
                raise FloatingPointError(f"loss became NaN/inf at step {self.step}: {losses}")
            if self.step % o.image_every == 0 or self.step == o.steps:  # the last grid shows the exported model
                self.write_grids()
            if self.step % o.checkpoint_every == 0 or self.step == o.steps:
                self.save_state()
            if self.rank == 0 and (self.step % o.export_every == 0 or self.step == o.steps):
                self.export()
        bar.close()
        if log is not None:
            log.close()
        if self.world > 1:  # every process waits for the first's export before the group goes
            dist.barrier()
            dist.destroy_process_group()


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 in hardware: a GPU that supports it, or a CPU with
    AVX-512 BF16 or AMX. Elsewhere autocast emulates it: measured on a 2-core AMD EPYC with AVX2
    alone (64-px conditioned step, batch 32, 2 threads), 1.0 faces a second against 20 in float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    checks = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return any(check() for check in checks if check is not None)


class Autocast(nn.Module):
    """A network called under bfloat16 autocast (``TrainOptions.bf16``; off: called as it is).
    Its outputs come back float32, so the losses and the next network's inputs are float32 and
    only the layers autocast picks (convolutions, linear maps) compute in bfloat16. Holds no
    weights of its own: saving and loading go to the network itself."""

    def __init__(self, module: nn.Module, enabled: bool) -> None:
        super().__init__()
        self.module, self.enabled = module, enabled

    def forward(self, *args: object) -> Any:
        if not self.enabled:
            return self.module(*args)
        device = next(self.module.parameters()).device.type
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            return _float32(self.module(*args))


def _float32(out: Any) -> Any:
    """``out`` (a tensor, or a tuple or list of them, None among them) with its floating tensors float32."""
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, tuple) and hasattr(out, "_fields"):  # a NamedTuple
        return type(out)(*(_float32(v) for v in out))
    if isinstance(out, (tuple, list)):
        return type(out)(_float32(v) for v in out)
    return out


class LatentCritic(nn.Module):
    """Fader Networks' latent discriminator (Lample et al., NeurIPS 2017): z -> attribute logits.
    A training loss only: it is neither the classifier C that reads the edits nor the judge."""

    def __init__(self, latent_dim: int, attributes: int, width: int = 512) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent_dim, width), nn.LeakyReLU(0.2), nn.Linear(width, width),
                                 nn.LeakyReLU(0.2), nn.Linear(width, attributes))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def _grown_name(key: str) -> str:
    """Where a half-resolution model's tensor goes in the network grown from it."""
    if key.startswith("decoder.to_rgb."):
        return "decoder.fade_rgb." + key[len("decoder.to_rgb."):]
    if key.startswith("encoder.stem."):
        return "encoder.fade_stem." + key[len("encoder.stem."):]
    if key.startswith("encoder.down."):
        i, rest = key[len("encoder.down."):].split(".", 1)
        return f"encoder.down.{int(i) + 1}.{rest}"
    return key


def kept_regions(n: int, size: int, whole: float, generator: torch.Generator) -> torch.Tensor:
    """(n, 1, size, size) in [0, 1]: how much of each face's feature map the decoder keeps in
    training (``TrainOptions.shortcut_drop`` = ``whole``). A share ``whole`` of the faces keeps
    none; the others lose 0 to 3 random rectangles (each side 1/8 to 1/2 of the map), their edges
    softened over a cell as the editor's fade under the brush is. 0: everything kept."""
    dev = generator.device
    keep = torch.ones(n, 1, size, size, device=dev)
    if whole <= 0:
        return keep

    def uniform() -> torch.Tensor:
        return torch.rand((n, 1, 1, 1), generator=generator, device=dev)
    cells = torch.arange(size, device=dev, dtype=torch.float32)
    ys, xs = cells.view(1, 1, size, 1), cells.view(1, 1, 1, size)
    lo, hi = max(1, size // 8), max(1, size // 2)
    for _ in range(3):
        on = uniform() < 0.5
        h, w = (lo + uniform() * (hi - lo + 1)).floor(), (lo + uniform() * (hi - lo + 1)).floor()
        y0, x0 = (uniform() * (size - h + 1)).floor(), (uniform() * (size - w + 1)).floor()
        keep = keep.masked_fill(on & (ys >= y0) & (ys < y0 + h) & (xs >= x0) & (xs < x0 + w), 0.0)
    keep = F.avg_pool2d(keep, 3, stride=1, padding=1, count_include_pad=False)
    return keep * (uniform() >= whole)


def photo_maps(shortcut: torch.Tensor, drop: float, generator: torch.Generator, edits: bool = False,
               edits_without_map: bool = False) -> torch.Tensor:
    """The feature maps a training batch's decoder passes get: the photos' own (parts of them kept
    as ``kept_regions`` says) for the reconstructions, none for the samples, and for a conditioned
    model's edits the same as the reconstructions' (none with ``edits_without_map``)."""
    kept = shortcut * kept_regions(len(shortcut), shortcut.shape[-1], drop, generator).to(shortcut)
    edited = [torch.zeros_like(kept) if edits_without_map else kept] if edits else []
    return torch.cat([kept, torch.zeros_like(kept), *edited])


def opponent_colour(x: torch.Tensor, cells: int = COLOUR_CELLS) -> torch.Tensor:
    """(N, 2 * cells * cells): images in [-1, 1] as their two opponent-colour channels, red against
    green and yellow against blue (the directions of CIELAB's a* and b*; lightness left out), each
    averaged over a cells x cells grid."""
    return F.adaptive_avg_pool2d(colour_pair(x), cells).flatten(1)


def attribute_colour_shift(faces: AlignedFaces, columns: list[int], cells: int = COLOUR_CELLS,
                           chunk: int = 2048) -> torch.Tensor:
    """(K, 2 * cells * cells): how turning each attribute on (-1 to +1) changes real photos'
    colours (``opponent_colour``), cell by cell, the other attributes held: the least-squares fit
    of the photos' colours on their halved labels and a constant, over the faces whose labels are
    all known. On CelebA at 64 px, blond hair shifts the hair's cells towards yellow (+0.08, +0.16)
    and eyeglasses turn the eyes' cells greyer (-0.10, -0.12): dark frames, no colour. Averaged
    with its mirror image, as the batches are mirrored at random."""
    k = len(columns)
    labels = faces.labels(np.arange(len(faces)))[:, columns].astype(np.float64)
    known = np.flatnonzero((labels != 0).all(1))
    if len(known) <= k:
        raise ValueError(f"only {len(known)} training faces have all {k} labels: too few to "
                         "fit how each attribute changes their colours")
    xtx = torch.zeros(k + 1, k + 1, dtype=torch.float64)
    xty = torch.zeros(k + 1, 2 * cells * cells, dtype=torch.float64)
    for start in range(0, len(known), chunk):
        rows = known[start:start + chunk]
        x = device_batch(faces.images(rows), np.zeros(len(rows), bool), torch.device("cpu"))
        y = opponent_colour(x, cells).double()
        design = torch.cat([torch.from_numpy(labels[rows] / 2), torch.ones(len(rows), 1, dtype=torch.float64)], 1)
        xtx += design.T @ design
        xty += design.T @ y
    coef = torch.linalg.solve(xtx + 1e-6 * torch.eye(k + 1, dtype=torch.float64), xty)[:k]
    shift = coef.view(k, 2, cells, cells)
    return (0.5 * (shift + shift.flip(-1))).flatten(1).float()


def colour_mismatch(edited: torch.Tensor, rebuilt: torch.Tensor, turned: torch.Tensor,
                    shift: torch.Tensor) -> torch.Tensor:
    """The colour term: how far the edits' colours (``opponent_colour``) moved from their
    reconstructions' (held fixed) otherwise than real photos' colours move with the attributes
    turned (``turned``: (N, K), +1 for an attribute turned on, -1 off, 0 kept; ``shift`` from
    ``attribute_colour_shift``, whose size gives the cells), as a mean absolute difference per cell."""
    cells = round((shift.shape[1] / 2) ** 0.5)
    moved = opponent_colour(edited, cells) - opponent_colour(rebuilt, cells).detach()
    return (moved - turned @ shift).abs().mean()


def worst_nudge(loss: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, eps: float,
                generator: torch.Generator) -> torch.Tensor:
    """``x`` moved by at most ``eps`` a value the way that raises ``loss`` (a classifier's on
    ``x``'s labels): a random start in the box, one step of 1.25 ``eps`` along the sign of the
    gradient, clipped back into the box and into [-1, 1] (Wong et al. 2020). Detached: a lesson
    for the classifier, not a path back to whatever made ``x``."""
    start = (torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1) * eps
    start.requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(x.detach() + start), start)
    return (x + (start + 1.25 * eps * grad.sign()).clamp(-eps, eps)).clamp(-1, 1).detach()


def _masked_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy over the known labels (+1 / -1); unknown ones (0) are left out."""
    known = labels != 0
    if not known.any():
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[known], (labels[known] > 0).float())


def _masked_guess(logits: torch.Tensor, labels: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """How much more the readings of the known labels tell than a reader who knows only how common
    each attribute is (``prior``, (K,), the share of faces that have it): binary cross-entropy
    towards the prior less its floor (the prior's own entropy), so 0 when nothing is told."""
    known = labels != 0
    if not known.any():
        return logits.sum() * 0.0
    target = prior.to(logits).expand_as(logits)[known]
    floor = -(target * target.log() + (1 - target) * (1 - target).log()).mean()
    return F.binary_cross_entropy_with_logits(logits[known], target) - floor


def train(opts: TrainOptions) -> Path:
    trainer = Trainer(opts)
    trainer.run()
    return trainer.out


@torch.no_grad()
def recalibrate_batchnorm(model: FaceModel, batch: Callable[[], torch.Tensor], n: int = 30,
                          drop: float = 0.0) -> FaceModel:
    """Re-estimate every BN layer's statistics as training sees them: real batches through
    the encoder, posterior and prior latents through the decoder (with a shortcut, the maps kept
    as ``TrainOptions.shortcut_drop`` = ``drop`` keeps them). Returns the model in eval mode."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a plain average over the n batches
    model.train()
    g = torch.Generator().manual_seed(0)
    for _ in range(n):
        x = batch()
        mu, logvar, _, shortcut = model.encoder(x)
        eps = torch.randn(mu.shape, generator=g).to(mu)
        z = mu + eps * torch.exp(0.5 * logvar)
        photo = None if shortcut is None else photo_maps(shortcut, drop, g)
        model.decoder(torch.cat([z, torch.randn(mu.shape, generator=g).to(mu)]), None, photo)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.1
    return model.eval()


def export_run(run_dir: Path, out_dir: Path, which: str = "ema") -> Path:
    """Write a run's latest encoder + decoder (``ema``: averaged and recalibrated, or ``model``:
    the live weights) as a model folder."""
    meta = json.loads((run_dir / "state.json").read_text())
    opts = TrainOptions.from_dict(meta["options"])
    tensors = load_file(str(run_dir / "state.safetensors"), device="cpu")
    model = FaceModel(opts.model)
    p = which + "."
    model.load_state_dict({k[len(p):]: v for k, v in tensors.items() if k.startswith(p)})
    if which == "ema":
        faces = AlignedFaces(build_cache(Path(opts.data), opts.model.resolution, tuple(opts.sets.split(","))), "train")
        rng = np.random.default_rng(int(meta["step"]))
        recalibrate_batchnorm(model, lambda: to_tensor(faces.images(
            rng.choice(len(faces), opts.batch_size, replace=False))), drop=opts.shortcut_drop)
    model.eval()
    step = int(meta["step"])
    name = f"{run_dir.name}-{step}" + ("" if which == "ema" else "-live")
    return checkpoint.save_model(model, out_dir, model_id=name, trained_steps=step,
                                 trained_images=step * opts.batch_size, training_sets=opts.sets.split(","))
