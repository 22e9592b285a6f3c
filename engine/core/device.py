"""The one device policy, for the editor, the command line, training and attribute learning.

``pick_device`` chooses: CUDA when present unless asked otherwise; an explicit choice that
cannot be had is an error. ``is_device_failure`` says, by the exception's type (never its
text), whether a failure belongs to the GPU, so that the editor moves to the CPU and goes on.
"""

from __future__ import annotations

import torch

# what a GPU raises when it runs out of memory or fails (a lost device, a kernel error)
DEVICE_FAILURES: tuple[type[BaseException], ...] = (torch.cuda.OutOfMemoryError, torch.AcceleratorError)


def pick_device(name: str | None = "auto") -> torch.device:
    """'auto' (or None/''): CUDA when present, else the CPU. An unusable explicit choice is an error."""
    if name in ("auto", "", None):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(str(name))
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}: use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for, but no CUDA GPU is available: use --device cpu")
    return dev


def is_device_failure(error: BaseException) -> bool:
    """Whether ``error`` is the GPU failing (out of memory, a device error), not the program."""
    return isinstance(error, DEVICE_FAILURES)


def failure_note(error: BaseException) -> str:
    """One line for the user about a GPU failure the program recovered from."""
    what = "ran out of memory" if isinstance(error, torch.cuda.OutOfMemoryError) else "failed"
    return f"The GPU {what} ({type(error).__name__}); continuing on the CPU for this session."
