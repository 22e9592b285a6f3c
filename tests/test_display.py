"""Whether a window can open, told before Qt starts (Qt's xcb platform aborts the process)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from editor import display


def _ok(_: str) -> bool:
    return True


def test_no_display_variable_names_the_libraries_qt_needs() -> None:
    why = display.problem({}, "linux", _ok, _ok)
    assert why is not None
    assert why.startswith("no display was found (DISPLAY is not set)")
    assert "libxcb-cursor0" in why
    assert "libxkbcommon-x11-0" in why
    assert "npe edit" in why  # what still works without one


def test_missing_xcb_libraries_are_named_with_their_packages() -> None:
    missing = {"libxcb-cursor.so.0", "libxcb-icccm.so.4"}
    why = display.problem({"DISPLAY": ":0"}, "linux", lambda lib: lib not in missing, _ok)
    assert why is not None
    assert why.endswith("install them with: sudo apt-get install libxcb-cursor0 libxcb-icccm4 (Debian/Ubuntu names)")


def test_a_display_nobody_answers_at() -> None:
    why = display.problem({"DISPLAY": ":77"}, "linux", _ok, lambda d: False)
    assert why is not None
    assert "nothing answers at DISPLAY=:77" in why


@pytest.mark.parametrize("env", [{"DISPLAY": ":0"}, {"WAYLAND_DISPLAY": "wayland-0"},
                                 {"QT_QPA_PLATFORM": "offscreen"}, {"QT_QPA_PLATFORM": "wayland"}])
def test_usable_settings_pass(env: dict[str, str]) -> None:
    assert display.problem(env, "linux", _ok, _ok) is None


def test_other_systems_are_left_to_qt() -> None:
    assert display.problem({}, "darwin", _ok, _ok) is None
    assert display.problem({}, "win32", _ok, _ok) is None


def test_an_x_server_socket_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real check connects to the display's socket (here a TCP listener standing in)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        if port < 6000:
            pytest.skip("the free port is below the X range")
        assert display.x_server_answers(f"127.0.0.1:{port - 6000}")
    assert not display.x_server_answers(f"127.0.0.1:{port - 6000}", timeout=0.5)
