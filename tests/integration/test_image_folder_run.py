"""`distill-train data=image_folder` end to end: the real entry point, in-process, on a tiny folder
of PNGs, with a small 2-D CNN teacher and student for one epoch each."""

from __future__ import annotations

import json
import sys

from distill.cli.train import main

from ..unit.test_image_folder import write_split


def test_a_run_on_an_image_folder_completes_and_keys_the_teacher_on_the_pixels(
    tmp_path, monkeypatch
):
    write_split(tmp_path / "images")
    run_dir, cache_dir = tmp_path / "run", tmp_path / "cache"
    argv = [
        "data=image_folder",
        f"data.root={tmp_path / 'images'}",
        "data.num_classes=3",
        "data.input_shape=[3,8,8]",
        "data.num_workers=0",
        "data.batch_size=8",
        "teacher=cnn2d_digits",
        "student=cnn2d_small",
        "teacher.train.max_epochs=1",
        "trainer.max_epochs=1",
        "pruning=none",
        "quantization=none",
        "export=false",
        "logger=none",
        "callbacks=none",
        "trainer.enable_progress_bar=false",
        "threads=1",
        f"hydra.run.dir={run_dir}",
        f"paths.cache_dir={cache_dir}",
        f"paths.log_dir={tmp_path / 'logs'}",
    ]
    monkeypatch.setattr(sys, "argv", ["distill-train", *argv])

    main()

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["data"] == {
        "target": "distill.data.ImageFolderDataModule",
        "num_classes": 3,
        "input_shape": [3, 8, 8],
    }
    assert 0.0 <= summary["student"]["test_acc"] <= 1.0
    assert summary["teacher"]["origin"] == "trained"
    # Decoded once into the cache (train and test), and the teacher's key covers the pixels.
    assert len(list((cache_dir / "images").glob("*/pixels.npy"))) == 2
    (meta,) = (cache_dir / "teachers").glob("*/meta.json")
    data = json.loads(meta.read_text())["material"]["data"]
    assert len(data["content_fingerprint"]) == 64
    assert "cache_dir" not in data
