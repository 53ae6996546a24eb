import os
import sys
import warnings
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))
warnings.filterwarnings("ignore", message=".*torchvision.*")


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """Tiny random-weight models written with save_pretrained (sd/, dinov2/, depth/)."""
    from stylegallery.testing import make_test_models

    return make_test_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def pipe(model_dir):
    """A StyleGallery loaded from the saved tiny models through the normal loading code."""
    from stylegallery import StyleGallery

    return StyleGallery.from_pretrained(
        str(model_dir / "sd"), semantic_model=str(model_dir / "dinov2"), depth_model=str(model_dir / "depth"), device="cpu"
    )


@pytest.fixture(scope="session")
def planted_run(pipe):
    """Content and two references of flat colour bands, prepared and inverted at 256 px."""
    from synthetic import planted_scene

    (content, *refs), (labels, *_) = planted_scene(256)
    prepared = pipe.prepare(content, refs, size=256)
    inversion = pipe.invert(prepared, progress=False)
    return prepared, inversion, labels


@pytest.fixture(scope="session")
def planted_stages(pipe, planted_run):
    """The planted run segmented into 3 regions per image (no depth) and matched: the inputs of stylize."""
    prepared, inversion, _ = planted_run
    segmentation = pipe.segment(prepared, inversion, n_clusters=3, use_depth=False, progress=False)
    return prepared, inversion, segmentation, pipe.match(prepared, inversion, segmentation)


@pytest.fixture()
def images(tmp_path):
    """A 96 px content of three vertical bands and a reference of three rows, as PNG files."""
    from synthetic import planted

    content, _ = planted(96, "bands")
    style, _ = planted(96, "rows", ("yellow", "green", "red"))
    content.save(tmp_path / "content.png")
    style.save(tmp_path / "style.png")
    return tmp_path / "content.png", tmp_path / "style.png"


@pytest.fixture(scope="module")
def chromium():
    """Headless Chromium through Playwright, one per test module (Playwright's sync API cannot run twice at once)."""
    from browser_support import CHROMIUM, CHROMIUM_ARGS, need_chromium

    need_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
