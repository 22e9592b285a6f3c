"""One model folder for every artefact, and one device policy."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from engine.core.checkpoint import DEFAULT_MODEL_DIR
from engine.core.device import is_device_failure, pick_device
from engine.core.model_folder import ModelFolder
from engine.core.pipeline import Engine


def test_the_folder_asked_for_is_used_whole(tiny_model_dir: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    engine = Engine.load(tiny_model_dir, "cpu")
    assert engine.folder.path == tiny_model_dir
    assert engine.refiner is None  # the tiny folder has no eye refiner: the cascade alone, not pretrained/'s
    assert engine.describe()["eye_refiner"] is None
    monkeypatch.setenv("NPE_MODEL_DIR", str(tiny_model_dir))
    assert ModelFolder.find().path == tiny_model_dir
    assert ModelFolder.find(tiny_model_dir / "model.safetensors").path == tiny_model_dir


@pytest.mark.weights
def test_an_eye_refiner_is_read_from_the_folder(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "with-refiner"
    shutil.copytree(tiny_model_dir, folder)
    for name in ("landmarks.safetensors", "landmarks.json"):
        shutil.copy(DEFAULT_MODEL_DIR / name, folder / name)
    engine = Engine.load(folder, "cpu")
    assert engine.refiner is not None
    assert engine.describe()["eye_refiner"] == str(folder / "landmarks.safetensors")


def test_device_choice() -> None:
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="unknown device"):
        pick_device("gpu-please")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            pick_device("cuda:0")


def test_device_failures_are_told_by_type_not_text() -> None:
    assert is_device_failure(torch.cuda.OutOfMemoryError("out of memory"))
    assert is_device_failure(torch.AcceleratorError("device lost"))
    assert not is_device_failure(RuntimeError("CUDA error: an illegal memory access"))  # text alone: a bug
    assert not is_device_failure(ValueError("cuda"))
