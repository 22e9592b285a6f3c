"""The ``npe`` and ``npe-editor`` commands.

    npe [PHOTO]              the editor, on PHOTO or on the default face
    npe COMMAND ...          a command-line tool (engine.tools.cli: info, edit, align, ...)
    npe bench --window       the editor window's responsiveness (editor.bench_window)
    npe-editor [PHOTO]       the editor alone

Nothing here imports Qt before it is needed, so the tools start as fast as without the
editor, and a missing display is one line (editor.display) instead of Qt aborting.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from editor import display
from engine.tools import cli


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["bench"] and "--window" in args:  # the window's figures need the editor
        from editor import bench_window

        return bench_window.main(args[1:])
    if args and (args[0] in cli.COMMANDS or args[0] in ("-h", "--help")):
        return cli.main(args)
    return editor_main(args)


def editor_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="npe", description="Open the Neural Photo Editor (`npe --help`: the "
                                                             "command-line tools).")
    parser.add_argument("photo", nargs="?", help="a photo or a saved .npe session (default: a bundled portrait)")
    parser.add_argument("--weights", help="model folder (default: pretrained/, or NPE_MODEL_DIR)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        display.require()
    except display.NoDisplayError as e:
        print(f"npe: error: {e}", file=sys.stderr)
        return 2
    from editor.app import run  # Qt from here on

    return run(photo=args.photo, weights=args.weights, device=args.device)


if __name__ == "__main__":
    sys.exit(main())
