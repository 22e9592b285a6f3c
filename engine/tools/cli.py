"""The ``npe`` command.

    (``npe`` and ``npe PHOTO`` start the editor: editor.launch dispatches to this module)
    npe info                          the model, as JSON
    npe edit PHOTO -o OUT [--stroke S]... [--attr NAME=V]...   (prints a one-line summary)
    npe align PHOTO -o CROP.png       the aligned crop; faces, landmarks, transform as JSON
    npe train --data DIR --out RUN    train the face model
    npe eval --data DIR               evaluate a model, as JSON
    npe attributes --data DIR         learn the attribute directions for a model
    npe landmarks --data DIR          train the eye-landmark refiner
    npe detail --data DIR --out RUN   train the hair detail network (strands where a stroke grows hair)
    npe bench                         speed figures, as JSON
    npe export RUN --out DIR          a training run's latest weights as a model folder

Every failure ends in one line on stderr and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from engine.core import align
from engine.core.attributes import SLIDER_RANGE, AttributeSet
from engine.core.checkpoint import ModelError, read_config
from engine.core.images import ImageError, check_output_path, load_photo, save_image
from engine.core.model import ModelConfig
from engine.core.model_folder import ModelFolder
from engine.core.pipeline import Engine, NoFaceError, choose_face, detect, open_session
from engine.core.session import StrokeMissedError
from engine.tools.attribute_learning import AttributeOptions, learn_attributes
from engine.tools.bench import BenchOptions, bench
from engine.tools.detail_training import DetailOptions, train_detail
from engine.tools.evaluate import EvalOptions, evaluate
from engine.tools.landmark_training import LandmarkOptions, train_landmarks
from engine.tools.pack import PackOptions, write_pack
from engine.tools.train import TrainOptions, export_run, train

T = TypeVar("T")
COMMANDS = ("info", "edit", "align", "train", "eval", "attributes", "landmarks", "detail", "bench", "export", "pack")
STROKE_RE = re.compile(r"^#?([0-9a-fA-F]{6}):(\d+(?:\.\d+)?):(.+)$")


class UsageError(Exception):
    pass


def parse_stroke(text: str) -> tuple[tuple[int, int, int], float, list[tuple[float, float]]]:
    """'#RRGGBB:RADIUS:x1,y1;x2,y2;...' -> (rgb, radius, points)."""
    m = STROKE_RE.match(text.strip())
    if not m:
        raise UsageError(f"bad --stroke {text!r}: expected '#RRGGBB:RADIUS:x1,y1;x2,y2;...'")
    hexcol, radius, pts = m.groups()
    rgb = (int(hexcol[0:2], 16), int(hexcol[2:4], 16), int(hexcol[4:6], 16))
    points = []
    for pair in pts.split(";"):
        if not pair.strip():
            continue
        try:
            xs, ys = pair.split(",")
            points.append((float(xs), float(ys)))
        except ValueError:
            raise UsageError(f"bad point {pair!r} in --stroke: expected 'x,y'") from None
    if not points:
        raise UsageError(f"--stroke {text!r} has no points")
    if float(radius) <= 0:
        raise UsageError(f"--stroke radius must be positive, got {radius}")
    return rgb, float(radius), points


def parse_attr(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise UsageError(f"bad --attr {text!r}: expected NAME=VALUE, e.g. smiling=1.5")
    try:
        number = float(value)
    except ValueError:
        raise UsageError(f"bad --attr {text!r}: {value.strip()!r} is not a number (e.g. smiling=1.5)") from None
    if not math.isfinite(number):
        raise UsageError(f"bad --attr {text!r}: the value must be a finite number (e.g. smiling=1.5)")
    return name.strip(), number


def check_attrs(attributes: AttributeSet, attrs: dict[str, float], allow_failed: bool, hold: bool) -> list[str]:
    """Refuse unknown names and values outside a slider's range, and sliders that failed the judge
    (in the mode ``hold``) unless ``allow_failed``; returns the warnings to print."""
    warnings = []
    for name, value in attrs.items():
        attributes.check_value(name, value)
        if attributes.failed_the_judge(name, hold):
            mode = "with correlated attributes held fixed" if hold else "with --independent"
            if not allow_failed:
                raise UsageError(f"the {name} slider failed the attribute judge {mode} (its edit may not show "
                                 "the attribute; see pretrained/MODEL_CARD.md): pass --allow-failed to use it anyway")
            warnings.append(f"the {name} slider failed the attribute judge {mode}: its edit may not show the attribute")
    return warnings


def attribute_help(model_dir: Path | None = None) -> str:
    """The epilog of ``npe edit --help``: the model's sliders, their range and judged quality."""
    folder = ModelFolder.find(model_dir)
    d = folder.path
    try:
        latent_dim = int(read_config(d)["model"]["latent_dim"])  # type: ignore[index]
        attributes = folder.load_attributes(latent_dim)
    except (ModelError, KeyError, TypeError, ValueError):
        return f"(no attribute list could be read from {d})"
    quality = {"good": "", "weak": "weak", "hidden": "failed the judge: needs --allow-failed"}
    lines = [f"attributes of the model in {d} (--attr NAME=VALUE, VALUE from {-SLIDER_RANGE:g} to "
             f"+{SLIDER_RANGE:g}; 0 leaves the photo as it is; judged good unless marked):"]
    for a in attributes.attributes:
        held, free = a.quality_in(True), a.quality_in(False)
        q = quality.get(held, held)
        extra = f"; with --independent: {quality.get(free, free) or 'good'}" if free != held else ""
        note = f"  ({q}{extra})" if q or extra else ""
        lines.append(f"  {a.name:<22} {a.label}{note}")
    return "\n".join(lines)


def _print_json(obj: object) -> None:
    print(json.dumps(obj, indent=2))


# ---- commands -------------------------------------------------------------------------

def cmd_info(args: argparse.Namespace) -> int:
    _print_json(Engine.load(args.weights, args.device).describe())
    return 0


def cmd_edit(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    check_output_path(args.output)
    strokes = [parse_stroke(s) for s in args.stroke or []]
    attrs = dict(parse_attr(a) for a in args.attr or [])
    engine = Engine.load(args.weights, args.device)
    for warning in check_attrs(engine.attributes, attrs, args.allow_failed, hold=not args.independent):
        print(f"npe edit: warning: {warning}", file=sys.stderr)  # (it fails before any work)
    session, faces = open_session(engine, args.photo, args.face)
    session.set_hold(not args.independent)
    if attrs:
        session.set_sliders(attrs)
        session.commit()
    for i, (rgb, radius, points) in enumerate(strokes, 1):
        try:
            session.paint(rgb, radius, points, args.strength)
        except StrokeMissedError as e:
            raise UsageError(f"stroke {i}: {e}; no file was written") from None
    out = Path(args.output)
    if out.exists() and not args.force and out.resolve() == Path(args.photo).resolve():
        raise UsageError(f"{out} is the photo being edited: pass --force to overwrite it")
    save_image(out, session.composite(detail=True), quality=args.quality, photo=session.photo)
    face = 0 if args.face is None else args.face
    seconds = time.perf_counter() - t0
    if args.json:
        _print_json({"output": str(out), "size": list(session.photo.size), "faces": len(faces),
                     "face": face if faces else None, "strokes": len(strokes), "attributes": attrs,
                     "seconds": round(seconds, 3)})
    else:
        w, h = session.photo.size
        which = f"face {face} of {len(faces)}" if faces else "no face found: the whole image"
        edits = [f"{len(strokes)} stroke{'s' if len(strokes) != 1 else ''}"] if strokes else []
        edits += [f"{k}={v:+g}" for k, v in attrs.items()]
        print(f"wrote {out} ({w}x{h}; {which}; {', '.join(edits) or 'no edits'}; {seconds:.1f} s)")
    return 0


def cmd_align(args: argparse.Namespace) -> int:
    check_output_path(args.output)
    refiner = ModelFolder.find(args.weights).load_refiner()
    photo = load_photo(args.photo)
    faces = detect(photo, refiner)
    face = choose_face(photo, faces, args.face, allow_whole=False)
    t = face.transform(args.size)
    save_image(args.output, align.warp_to_crop(photo.pixels, t, args.size), photo=None)
    _print_json({
        "photo": str(args.photo), "size": list(photo.size), "crop": str(args.output), "crop_size": args.size,
        "faces": [f.to_dict() for f in faces], "chosen": faces.index(face),
        "landmarks": {"left_eye": face.eyes[0].round(2).tolist(), "right_eye": face.eyes[1].round(2).tolist()},
        "transform": t.round(6).tolist(),
    })
    return 0


def _options(cls: type[T], args: argparse.Namespace, base: T | None = None) -> T:
    """A tool's typed options from the parsed command line; fields the line left out keep their
    defaults, or ``base``'s values when it is given."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)  # type: ignore[arg-type]
             if getattr(args, f.name, None) is not None}
    return dataclasses.replace(base, **given) if base is not None else cls(**given)  # type: ignore[type-var]


def cmd_train(args: argparse.Namespace) -> int:
    # --resume continues the run with its own options (its network above all); any given here win
    saved = Path(args.out or TrainOptions.out) / "options.json"
    run = TrainOptions.from_dict(json.loads(saved.read_text())) if args.resume and saved.is_file() else None
    opts = _options(TrainOptions, args, run)
    model = {f: getattr(args, f) for f in ModelConfig.__dataclass_fields__ if getattr(args, f, None) is not None}
    if model:
        base = {k: v for k, v in opts.model.to_dict().items() if k != "grid"}  # the grid follows latent_dim
        opts = dataclasses.replace(opts, model=ModelConfig.from_dict({**base, **model}))
    out = train(opts)
    print(f"trained; exported model in {out / 'model'}", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    out = export_run(Path(args.run), Path(args.out), which="model" if args.live else "ema")
    print(json.dumps({"model": str(out)}))
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    _print_json(write_pack(_options(PackOptions, args)))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    _print_json(evaluate(_options(EvalOptions, args)))
    return 0


def cmd_attributes(args: argparse.Namespace) -> int:
    _print_json(learn_attributes(_options(AttributeOptions, args)))
    return 0


def cmd_landmarks(args: argparse.Namespace) -> int:
    path = train_landmarks(_options(LandmarkOptions, args))
    print(json.dumps({"weights": str(path)}))
    return 0


def cmd_detail(args: argparse.Namespace) -> int:
    opts = _options(DetailOptions, args)
    path = train_detail(dataclasses.replace(opts, data=Path(opts.data), out=Path(opts.out)))
    print(json.dumps({"weights": str(path)}))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.window:
        raise UsageError("the window's figures come from the editor: run `npe bench --window`")
    _print_json(bench(_options(BenchOptions, args)))
    return 0


# ---- parser -----------------------------------------------------------------------------

def _add_field(p: argparse.ArgumentParser, f: dataclasses.Field[object], required: bool = False) -> None:
    """A flag for one option field: booleans switch on; tuples of ints are written 'a,b,c'."""
    flag = "--" + f.name.replace("_", "-")
    typ = str(f.type)
    default = f.default if f.default is not dataclasses.MISSING else None
    if typ == "bool":
        p.add_argument(flag, dest=f.name, action="store_true", default=None, help=f"(default {default})")
        return
    convert: Callable[[str], object] = {"int": int, "float": float}.get(typ, str)
    if typ.startswith("tuple[int"):
        convert = _int_list
        default = ",".join(map(str, default)) if default else default  # type: ignore[call-overload]
    elif typ.startswith("tuple[str"):
        convert = _name_list
        default = ",".join(default) if default else ""  # type: ignore[arg-type]
    p.add_argument(flag, dest=f.name, type=convert, default=None, required=required, help=f"(default {default!r})")


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole numbers separated by commas, got {text!r}") from None


def _name_list(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", help="model folder (default: pretrained/)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")


def build_parser(attribute_list_from: Path | None | bool = False) -> argparse.ArgumentParser:
    """The parser; ``attribute_list_from``: a model folder (True: the default one) whose sliders
    ``npe edit --help`` lists (read only when help is asked for)."""
    parser = argparse.ArgumentParser(prog="npe", description="Neural Photo Editor: `npe` or `npe PHOTO` opens the "
                                     "editor; these commands work without a window.")
    sub = parser.add_subparsers(dest="command")

    p = sub.add_parser("info", help="print the model's description as JSON")
    _add_common(p)

    p = sub.add_parser("edit", help="apply strokes and sliders to a photo headlessly",
                       description="Apply brush strokes and attribute sliders to a photo and write the result "
                                   "at the photo's own resolution.",
                       epilog=attribute_help(None if attribute_list_from is True else attribute_list_from)
                       if attribute_list_from else None,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("photo")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--stroke", action="append", help="'#RRGGBB:RADIUS:x1,y1;x2,y2;...' in photo pixels")
    p.add_argument("--strength", type=float, default=1.0, help="brush strength, a factor on the step (default 1)")
    p.add_argument("--attr", action="append",
                   help=f"NAME=VALUE slider setting, e.g. smiling=1.5; VALUE from {-SLIDER_RANGE:g} to "
                        f"+{SLIDER_RANGE:g} (names below)")
    p.add_argument("--allow-failed", action="store_true",
                   help="allow sliders that failed the attribute judge (a warning is printed)")
    p.add_argument("--face", type=int, help="which detected face (0 = the largest)")
    p.add_argument("--independent", action="store_true",
                   help="sliders move along their plain directions (default: correlated attributes held fixed)")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality (default 95)")
    p.add_argument("--force", action="store_true", help="allow overwriting the input photo")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    _add_common(p)

    p = sub.add_parser("align", help="write the aligned face crop and print the alignment")
    p.add_argument("photo")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--face", type=int)
    p.add_argument("--weights", help="model folder whose eye refiner is used (default: pretrained/)")

    p = sub.add_parser("train", help="train the face model")
    for f in dataclasses.fields(TrainOptions):
        if f.name != "model":
            _add_field(p, f, required=f.name == "data")
    for f in dataclasses.fields(ModelConfig):  # the network: saved in config.json as the loader reads it
        if f.name != "grid":
            _add_field(p, f)

    p = sub.add_parser("export", help="write a training run's latest weights as a model folder")
    p.add_argument("run", help="the run folder (npe train --out)")
    p.add_argument("--out", required=True, help="the model folder to write")
    p.add_argument("--live", action="store_true",
                   help="the live weights instead of the averaged ones (no batch-norm recalibration, no data needed)")

    p = sub.add_parser("pack", help="pack a data folder's aligned faces into small files (WebP) to train "
                                    "elsewhere: --data PACK then works as the folder does",
                       description="Write the training faces (and a few held-out ones) of a prepared data folder, "
                                   "aligned at --resolution, as a .npepack file (1.8 KB a face at 128 px), split "
                                   "into parts of at most --max-mb.")
    for f in dataclasses.fields(PackOptions):
        _add_field(p, f, required=f.name in ("data", "out"))

    p = sub.add_parser("eval", help="evaluate a model; prints JSON")
    p.add_argument("--data", required=True, help="prepared data folder or a folder of face photos")
    p.add_argument("--n", type=int, default=None,
                   help="faces to evaluate (default 500; 24 whole photos with --photo-edits)")
    p.add_argument("--grid", default="eval-grid.png", help="where to write the image grid")
    p.add_argument("--attributes", action="store_true", help="evaluate the attribute sliders instead")
    p.add_argument("--alignment", action="store_true", help="evaluate face detection and eye alignment instead")
    p.add_argument("--photo-edits", action="store_true",
                   help="instead: edits on whole photos at their own resolution (texture ratio, background change)")
    p.add_argument("--compare-at", type=int, default=None, metavar="PX",
                   help="also score reconstructions at PX pixels: the same faces for models of any resolution")
    p.add_argument("--rule", default="adam", choices=("adam", "sgd2016"), help="brush update rule to measure")
    p.add_argument("--brush-n", type=int, default=24, help="faces to replay the brush strokes on")
    p.add_argument("--brush-lr", type=float, default=None,
                   help="the brush's step size to measure (default: the model's own, config.json 'brush')")
    p.add_argument("--brush-hue", type=float, default=None,
                   help="the brush's hue-drift weight to measure (default: the model's own, config.json 'brush')")
    p.add_argument("--brush-attributes", type=float, default=None,
                   help="the brush's step on a conditioned decoder's attribute input to measure (0: z alone; "
                        "default: the model's own, config.json 'brush')")
    p.add_argument("--threads", type=int, default=0)
    _add_common(p)

    p = sub.add_parser("attributes", help="learn attribute directions for a model")
    p.add_argument("--data", required=True)
    p.add_argument("--out", help="model folder to write to (default: the --weights folder)")
    p.add_argument("--n", type=int, default=0, help="training faces to encode (0: all)")
    p.add_argument("--retrain-judge", action="store_true", help="train the attribute judge again")
    p.add_argument("--guide-steps", type=int, default=None,
                   help="turn each slider's direction through the decoder for this many steps, against a guide "
                        "classifier trained on the photos (default 150; 0: the plain mean difference)")
    _add_common(p)

    p = sub.add_parser("landmarks", help="train the eye-landmark refiner")
    p.add_argument("--data", required=True)
    p.add_argument("--out", default="pretrained")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--augment", action="store_true", default=None,
                   help="degrade the training images at random (gamma, contrast, blur, JPEG, noise); "
                        "measured on hand-placed eyes, 3000 steps: held-out CelebA median 3.5 -> 3.6 %%, "
                        "p90 6.4 -> 6.7 %% (off by default)")
    p.add_argument("--unlabelled", type=int, default=None,
                   help="also train on this many unlabelled LFW/UTKFace faces: the eyes found in two "
                        "differently turned crops of a face must agree (default 0: off; measured with 1500 "
                        "faces at weight 1: All-Age-Faces median 5.3 -> 8.0 %%, CelebA 3.4 -> 5.9 %%, worse)")

    p = sub.add_parser("detail", help="train the hair detail network; the run folder keeps its state and "
                                      "the weights to ship (detail.safetensors + detail.json)")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True, help="the run folder (outside the repository)")
    p.add_argument("--steps", type=int, default=None, help="train until this step (default 20000)")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--resume", action="store_true", default=None, help="continue the run in --out")
    p.add_argument("--sigma", type=float, default=None,
                   help="the blur that parts fine detail from the rest, pixels of aligned CelebA (default 4)")
    p.add_argument("--l1", type=float, default=None, help="the weight of staying near the photo (default 3)")
    p.add_argument("--weights", help="the face model whose renditions it learns to add detail to "
                                     "(default: pretrained/)")
    p.add_argument("--init-from", help="a new run starts from these detail weights (a detail.safetensors or "
                                       "a model folder with one), e.g. to move the shipped network onto a "
                                       "new face model's renditions")

    p = sub.add_parser("bench", help="speed figures as JSON")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--photo", help="a photo to open (default: a generated 12-megapixel photo)")
    p.add_argument("--events", type=int, default=300, help="brush samples to replay")
    p.add_argument("--window", action="store_true",
                   help="instead: the editor window's responsiveness during a long stroke "
                        "(run as `npe bench --window`)")
    _add_common(p)
    return parser


HANDLERS = {"info": cmd_info, "edit": cmd_edit, "align": cmd_align, "train": cmd_train, "eval": cmd_eval,
            "attributes": cmd_attributes, "landmarks": cmd_landmarks, "detail": cmd_detail, "bench": cmd_bench,
            "export": cmd_export, "pack": cmd_pack}


def _weights_in(argv: list[str]) -> Path | None:
    """The --weights folder named on a command line, if any (for the help's attribute list)."""
    for i, a in enumerate(argv):
        if a == "--weights" and i + 1 < len(argv):
            return Path(argv[i + 1])
        if a.startswith("--weights="):
            return Path(a.partition("=")[2])
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        argv = ["--help"]
    wants_help = "-h" in argv or "--help" in argv
    args = build_parser(_weights_in(argv) or True if wants_help else False).parse_args(argv)
    prog = f"npe {args.command}"
    try:
        return HANDLERS[args.command](args)
    except BrokenPipeError:  # the reader went away (`npe info | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141
    except (UsageError, ImageError, ModelError, NoFaceError, KeyError, ValueError, OSError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"{prog}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
