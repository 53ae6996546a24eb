"""Bad input gives a clear error; the CLI exits 2 with one line, and writes nothing it should not."""

import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from stylegallery import StyleGalleryError
from stylegallery.tools.cli import main
from stylegallery.images import check_size, load_image



def test_unusual_modes_are_converted(tmp_path):
    grey16 = Image.fromarray((np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16))
    grey16.save(tmp_path / "g16.png")
    Image.new("CMYK", (64, 64), (0, 255, 0, 0)).save(tmp_path / "cmyk.jpg")
    Image.new("RGBA", (64, 64), (255, 0, 0, 0)).save(tmp_path / "rgba.png")
    Image.new("P", (64, 64)).save(tmp_path / "p.gif")
    for name in ("g16.png", "cmyk.jpg", "rgba.png", "p.gif"):
        image, _, digest = load_image(tmp_path / name)
        assert image.mode == "RGB" and image.size == (64, 64) and len(digest) == 64
    g16 = np.asarray(load_image(tmp_path / "g16.png")[0])
    assert g16[0, 0, 0] == 0 and g16[-1, -1, 0] == 255  # 16-bit range scaled, not clipped
    assert np.asarray(load_image(tmp_path / "rgba.png")[0])[0, 0].tolist() == [255, 255, 255]  # transparent -> white


def test_exif_orientation_is_honoured(tmp_path):
    image = Image.new("RGB", (80, 40), (10, 20, 30))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    image.save(tmp_path / "rot.jpg", exif=exif)
    assert load_image(tmp_path / "rot.jpg")[0].size == (40, 80)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: None, "not found"),
        (lambda p: p.write_text("hello, not an image"), "not an image"),
        (lambda p: p.write_bytes(_png_bytes()[:200]), "damaged"),
        (lambda p: Image.new("RGB", (1, 1)).save(p, format="PNG"), "too small"),
    ],
)
def test_bad_image_files(tmp_path, make, message):
    path = tmp_path / "bad.png"
    make(path)
    with pytest.raises(StyleGalleryError, match=message):
        load_image(path)


def _png_bytes():
    import io

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("size", [100, 0, -64, (64, 96)])
def test_size_must_be_multiple_of_64(size):
    with pytest.raises(StyleGalleryError, match="multiple of 64"):
        check_size(size)


def test_non_square_size_is_allowed(pipe, images):
    prepared = pipe.prepare(images[0], [images[1]], size=(64, 128))
    assert prepared.pixels.shape[-2:] == (64, 128) and prepared.latents.shape[-2:] == (8, 16)


def test_impossible_settings(pipe, images):
    with pytest.raises(StyleGalleryError, match="no style images"):
        pipe.prepare(images[0], [])
    prepared = pipe.prepare(images[0], [images[1]], size=64)
    inversion = pipe.invert(prepared, inversion_steps=2, progress=False)
    with pytest.raises(StyleGalleryError, match="max_clusters"):
        pipe.segment(prepared, inversion, max_clusters=1)


@pytest.mark.parametrize(
    "stage, settings, message",
    [
        ("segment", {"merge_threshold": float("nan")}, "merge_threshold must be a finite number"),
        ("segment", {"depth_span": float("inf")}, "depth_span must be a finite number"),
        ("segment", {"n_init": 0}, "n_init must be at least 1"),
        ("match", {"semantic_weight": float("nan")}, "semantic_weight must be a finite number"),
        ("match", {"geometric_weight": -1.0}, "geometric_weight must be at least 0"),
        ("stylize", {"lr": float("nan")}, "lr must be a finite number"),
        ("stylize", {"c_ratio": float("inf")}, "c_ratio must be a finite number"),
        ("stylize", {"query_scale": 0.0}, "query_scale must be positive"),
        ("stylize", {"steps": 2.5}, "steps must be a whole number"),
        ("invert", {"weight_midpoint": float("nan")}, "weight_midpoint must be a finite number"),
    ],
)
def test_non_finite_and_impossible_numbers_are_refused(pipe, images, stage, settings, message):
    prepared = pipe.prepare(images[0], [images[1]], size=64)
    inversion = pipe.invert(prepared, inversion_steps=2, progress=False)
    segmentation = pipe.segment(prepared, inversion, n_clusters=2, use_depth=False, progress=False)
    matching = pipe.match(prepared, inversion, segmentation)
    args = {"invert": (prepared,), "segment": (prepared, inversion), "match": (prepared, inversion, segmentation),
            "stylize": (prepared, inversion, segmentation, matching)}[stage]
    with pytest.raises(StyleGalleryError, match=message):
        getattr(pipe, stage)(*args, **settings)


def test_outputs_get_the_permissions_of_a_plain_open(model_dir, images, tmp_path, capsys, pipe):
    import os
    import stat

    from stylegallery import TensorCache

    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    old = os.umask(0o022)
    try:
        out, report, regions = tmp_path / "out.png", tmp_path / "r.json", tmp_path / "regions"
        args = ["run", *images, "-o", out, "--model", model_dir / "sd", "--no-semantic", "--no-depth", "--size", 64,
                "--steps", 1, "--inversion-steps", 2, "--max-clusters", 2, "--report", report,
                "--save-regions", regions, "--quiet"]
        code, err = _cli(capsys, *args)
        assert code == 0, err
        for path in (out, report, regions / "regions_content.png"):
            assert mode(path) == 0o644, path
        out.chmod(0o640)  # a replaced file keeps the permissions its owner gave it
        assert _cli(capsys, *args, "--overwrite")[0] == 0 and mode(out) == 0o640
        prepared = pipe.prepare(images[0], [images[1]], size=64)
        assert mode(prepared.save(tmp_path / "prepare.safetensors")) == 0o644
        cache = TensorCache(directory=tmp_path / "cache")
        cache.put("k", {"x": torch.ones(2)})
        assert [mode(p) for p in (tmp_path / "cache").iterdir()] == [0o644]
        os.umask(0o077)  # a private umask gives private files
        assert mode(prepared.save(tmp_path / "private.safetensors")) == 0o600
    finally:
        os.umask(old)


def _cli(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.err.strip()


def test_cli_run_writes_image_report_and_regions(model_dir, images, tmp_path, capsys):
    out, report, regions = tmp_path / "out.png", tmp_path / "r.json", tmp_path / "regions"
    args = ["run", *images, images[1], "-o", out, "--model", model_dir / "sd", "--semantic-model", model_dir / "dinov2",
            "--depth-model", model_dir / "depth", "--size", 64, "--steps", 3, "--inversion-steps", 3,
            "--max-clusters", 3, "--report", report, "--save-regions", regions, "--quiet"]
    code, err = _cli(capsys, *args)
    assert code == 0, err
    assert Image.open(out).size == (64, 64)
    data = json.loads(report.read_text())
    assert set(data["timings"]) == {"prepare", "invert", "segment", "match", "stylize"}
    assert set(data["regions"]) == {"content", "style1", "style2"}
    assert {"content_region", "style_image", "style_region", "score", "statistical", "semantic", "geometric"} <= set(data["matches"][0])
    assert [h["step"] for h in data["loss_history"]] == [1, 2, 3]
    assert {"step", "timestep", "total", "content", "style"} == set(data["loss_history"][0])
    assert data["peak_memory"]["cpu_max_rss_mb"] > 0
    grey = np.asarray(Image.open(regions / "regions_content.png"))
    assert len(np.unique(grey)) == data["regions"]["content"]
    # an existing output is not overwritten without --overwrite
    before = out.read_bytes()
    code, err = _cli(capsys, *args)
    assert code == 2 and "already exists" in err and "\n" not in err
    assert out.read_bytes() == before
    code, err = _cli(capsys, *args, "--overwrite", "--low-memory")  # gradient checkpointing: the same image
    assert code == 0, err
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(io.BytesIO(before))))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--size", "100"], "multiple of 64"),
        (["--c-ratio", "-1"], "c_ratio"),
        (["--max-clusters", "1"], "max_clusters"),
        (["--lr", "nan"], "lr must be a finite number"),
        (["--lr", "inf"], "lr must be a finite number"),
        (["--c-ratio", "inf"], "c_ratio must be a finite number"),
        (["--c-ratio", "nan"], "c_ratio must be a finite number"),
        (["--seed", "-3"], "seed"),
    ],
)
def test_cli_bad_settings_exit_2_with_one_line(model_dir, images, tmp_path, capsys, extra, message):
    code, err = _cli(capsys, "run", *images, "-o", tmp_path / "o.png", "--model", model_dir / "sd", "--no-semantic",
                     "--no-depth", "--steps", 1, "--inversion-steps", 1, *extra, "--quiet")
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o.png").exists()


def test_cli_bad_files_exit_2(model_dir, images, tmp_path, capsys):
    (tmp_path / "text.png").write_text("not an image")
    for content in (tmp_path / "missing.png", tmp_path / "text.png"):
        code, err = _cli(capsys, "run", content, images[1], "-o", tmp_path / "o.png", "--model", model_dir / "sd",
                         "--no-semantic", "--no-depth", "--quiet")
        assert code == 2 and len(err.splitlines()) == 1, err
    code, err = _cli(capsys, "run", *images, "-o", tmp_path / "o.png", "--model", tmp_path / "nomodel", "--quiet")
    assert code == 2 and "not found" in err


def test_console_script_make_test_model(tmp_path):
    done = subprocess.run([sys.executable, "-m", "stylegallery", "make-test-model", str(tmp_path / "m")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "m" / "sd" / "unet" / "config.json").is_file() and (tmp_path / "m" / "depth").is_dir()
    again = subprocess.run([sys.executable, "-m", "stylegallery", "make-test-model", str(tmp_path / "m")],
                           capture_output=True, text=True)
    assert again.returncode == 2 and len(again.stderr.strip().splitlines()) == 1
