"""Can Qt open a window here? Checked before Qt is started, because when it cannot, Qt's
xcb platform aborts the whole process (SIGABRT, exit 134) with a generic message.

Qt-free on purpose: ``problem()`` looks only at the environment, the dynamic loader and
the X server's socket, and returns one line for the user, or None when a window can open.
"""

from __future__ import annotations

import ctypes
import os
import socket
import sys
from collections.abc import Callable, Mapping

# The shared libraries Qt's xcb platform plugin loads that a desktop Linux usually has but
# a minimal or server install often lacks, with the Debian/Ubuntu package of each.
XCB_LIBRARIES = {
    "libxcb-cursor.so.0": "libxcb-cursor0",
    "libxcb-icccm.so.4": "libxcb-icccm4",
    "libxcb-image.so.0": "libxcb-image0",
    "libxcb-keysyms.so.1": "libxcb-keysyms1",
    "libxcb-randr.so.0": "libxcb-randr0",
    "libxcb-render-util.so.0": "libxcb-render-util0",
    "libxcb-shape.so.0": "libxcb-shape0",
    "libxcb-xkb.so.1": "libxcb-xkb1",
    "libxkbcommon-x11.so.0": "libxkbcommon-x11-0",
    "libX11-xcb.so.1": "libx11-xcb1",
    "libEGL.so.1": "libegl1",
    "libfontconfig.so.1": "libfontconfig1",
    "libdbus-1.so.3": "libdbus-1-3",
}
NEEDS = ("on Linux, Qt's xcb platform needs these system packages (Debian/Ubuntu names): "
         + " ".join(XCB_LIBRARIES.values()))
OTHER_COMMANDS = "the other commands (npe edit, npe align, npe info, ...) need no display"


def loadable(soname: str) -> bool:
    try:
        ctypes.CDLL(soname)
    except OSError:
        return False
    return True


def x_server_answers(display: str, timeout: float = 2.0) -> bool:
    """Whether something listens where DISPLAY points (a local socket or TCP port 6000 + N)."""
    host, _, rest = display.rpartition(":")
    number = rest.split(".")[0]
    if not number.isdigit():
        return True  # an unusual DISPLAY: let Qt judge it
    if host.startswith("unix/"):
        host = ""
    if host in ("", "unix"):
        path = f"/tmp/.X11-unix/X{number}"
        for address in ("\0" + path, path):  # Linux's abstract socket first, then the file
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(timeout)
                try:
                    s.connect(address)
                except OSError:
                    continue
                return True
        return False
    try:
        socket.create_connection((host, 6000 + int(number)), timeout=timeout).close()
    except OSError:
        return False
    return True


def problem(env: Mapping[str, str] | None = None, platform: str = sys.platform,
            can_load: Callable[[str], bool] = loadable,
            answers: Callable[[str], bool] = x_server_answers) -> str | None:
    """One line saying why no window can open here, or None when one can (or it is not ours to tell)."""
    env = os.environ if env is None else env
    if not platform.startswith("linux"):
        return None
    qpa = env.get("QT_QPA_PLATFORM", "")
    if qpa and not qpa.startswith("xcb"):
        return None  # offscreen, wayland, vnc, ...: Qt's own choice, not the xcb case
    x11 = env.get("DISPLAY", "")
    if not x11:
        if env.get("WAYLAND_DISPLAY") and not qpa:
            return None  # Qt uses Wayland
        return (f"no display was found (DISPLAY is not set): start the editor from a desktop session, "
                f"over ssh -X, or under xvfb-run; {NEEDS}; {OTHER_COMMANDS}")
    missing = [pkg for lib, pkg in XCB_LIBRARIES.items() if not can_load(lib)]
    if missing:
        return (f"the display cannot be used: Qt's xcb platform needs system libraries that are missing; "
                f"install them with: sudo apt-get install {' '.join(missing)} (Debian/Ubuntu names)")
    if not answers(x11):
        return f"no display was found: nothing answers at DISPLAY={x11}; {NEEDS}; {OTHER_COMMANDS}"
    return None


class NoDisplayError(OSError):
    """No window can be opened; the message is for the user."""


def require() -> None:
    """Raise ``NoDisplayError`` with one line for the user when no window can open."""
    why = problem()
    if why is not None:
        raise NoDisplayError(why)
