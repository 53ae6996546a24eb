"""Region control: per-region style strength and content weight, keeping the content's colours, user masks."""

import numpy as np
import pytest
import torch
from skimage.color import rgb2lab

from stylegallery import StyleGalleryError

STEPS = 6


@pytest.fixture
def exact_threads(monkeypatch, pipe):
    """Pin torch's threads: results compared to the last bit must not depend on how many threads each stage got."""
    monkeypatch.setattr(pipe, "cpu_threads", None)
    return pipe


def _stylize(pipe, stages, **settings):
    prepared, inversion, segmentation, matching = stages
    return pipe.stylize(prepared, inversion, segmentation, matching, steps=STEPS, progress=False, **settings)


def test_every_new_option_at_its_default_gives_the_papers_result_bit_for_bit(exact_threads, planted_stages):
    pipe = exact_threads
    plain = _stylize(pipe, planted_stages)
    n = planted_stages[2].n_regions(0)
    given = _stylize(pipe, planted_stages, region_strength={r: 1.0 for r in range(n)}, region_content_weight={},
                     keep_colours=False)
    assert torch.equal(plain.latent, given.latent) and torch.equal(plain.pixels, given.pixels)
    assert plain.history == given.history
    assert plain.settings["region_strength"] is None and plain.settings["keep_colours"] is False
    assert given.settings["region_strength"] == {str(r): 1.0 for r in range(n)}


def test_strength_multiplies_each_regions_style_loss_and_content_weight_the_content_loss(exact_threads, planted_stages):
    """At the first step every run starts from the same latent, so the recorded losses follow from the definition:
    style = sum_r s_r L_r, and a content weight w on every region multiplies the content loss by w."""
    pipe = exact_threads
    plain = _stylize(pipe, planted_stages)
    strength = {0: 0.0, 1: 3.0}
    strong = _stylize(pipe, planted_stages, region_strength=strength)
    first, weighted = plain.history[0], strong.history[0]
    for r, loss in first["style_per_region"].items():
        assert weighted["style_per_region"][r] == pytest.approx(strength.get(int(r), 1.0) * loss, rel=1e-6)
    assert weighted["style"] == pytest.approx(sum(strength.get(int(r), 1.0) * v for r, v in
                                                  first["style_per_region"].items()), rel=1e-6)
    assert weighted["content"] == pytest.approx(first["content"], rel=1e-6)
    # a region at strength 0 has no style loss at any step: nothing pulls it toward its match
    assert all(record["style_per_region"]["0"] == 0.0 for record in strong.history)
    n = planted_stages[2].n_regions(0)
    doubled = _stylize(pipe, planted_stages, region_content_weight={r: 2.0 for r in range(n)})
    assert doubled.history[0]["content"] == pytest.approx(2 * first["content"], rel=1e-5)
    assert doubled.history[0]["style"] == pytest.approx(first["style"], rel=1e-6)


def test_a_heavier_content_weight_keeps_that_region_closer_to_the_content(exact_threads, planted_stages):
    pipe = exact_threads
    prepared, _, segmentation, _ = planted_stages
    plain = _stylize(pipe, planted_stages)
    held = _stylize(pipe, planted_stages, region_content_weight={1: 4.0})
    _, before = pipe.content_loss_regions(prepared, segmentation, plain)
    _, after = pipe.content_loss_regions(prepared, segmentation, held)
    assert after[1] < before[1]


def test_region_weights_name_existing_regions(pipe, planted_stages):
    n = planted_stages[2].n_regions(0)
    with pytest.raises(StyleGalleryError, match=f"names region {n}, but the content has {n} regions"):
        _stylize(pipe, planted_stages, region_strength={n: 0.5})
    with pytest.raises(StyleGalleryError, match=r"region_content_weight\[1\] must be at least 0"):
        _stylize(pipe, planted_stages, region_content_weight={1: -1.0})
    with pytest.raises(StyleGalleryError, match="must be a dict"):
        _stylize(pipe, planted_stages, region_strength=0.5)


def test_keep_colours_takes_the_lightness_of_the_result_and_the_chroma_of_the_content(exact_threads, planted_stages):
    pipe = exact_threads
    prepared, _, segmentation, matching = planted_stages
    plain = _stylize(pipe, planted_stages)
    kept = _stylize(pipe, planted_stages, keep_colours=True)
    assert torch.equal(plain.latent, kept.latent)  # a change of the picture only: the optimization is the same
    lab_plain, lab_kept = (rgb2lab(x.pixels.permute(1, 2, 0).numpy()) for x in (plain, kept))
    lab_content = rgb2lab(prepared.pixels[0].permute(1, 2, 0).numpy())
    # out-of-gamut colours are clipped back into sRGB, and pixels are rounded: compare where most pixels are
    assert np.median(np.abs(lab_kept[..., 0] - lab_plain[..., 0])) < 2.0
    assert np.median(np.abs(lab_kept[..., 1:] - lab_content[..., 1:])) < 2.0
    assert np.median(np.abs(lab_plain[..., 1:] - lab_content[..., 1:])) > 5.0
    change_plain = pipe.region_scores(prepared, segmentation, matching, plain).colour_change
    change_kept = pipe.region_scores(prepared, segmentation, matching, kept).colour_change
    assert (change_kept < change_plain).all()
    assert kept.settings["keep_colours"] is True


def test_region_weights_read_from_text():
    from stylegallery.settings import region_weights

    assert region_weights("2=0.3; 0=1.5") == {2: 0.3, 0: 1.5}
    assert region_weights("1=0,3=2") == {1: 0.0, 3: 2.0}
    with pytest.raises(StyleGalleryError, match="REGION=WEIGHT"):
        region_weights("2:0.3")


# ------------------------------------------------------------------------------------------ masks from files
def _cli(capsys, *args):
    from stylegallery.tools.cli import main

    code = main([str(a) for a in args])
    return code, capsys.readouterr().err.strip()


def _run_options(model_dir, out, size=64):
    return ["-o", out, "--model", model_dir / "sd", "--no-semantic", "--no-depth", "--size", size, "--steps", 2,
            "--inversion-steps", 2, "--max-clusters", 3, "--quiet"]


def test_cli_masks_become_the_regions_and_the_report_says_so(model_dir, images, tmp_path, capsys):
    from PIL import Image

    content, style = images
    # a LabelMe-style palette label image: background 0, one square region at the image's own size (96 px) ...
    label = np.zeros((96, 96), np.uint8)
    label[12:84, 12:84] = 1  # latent cells 2..13 of the 16 x 16 grid at 128 px
    palette = Image.fromarray(label, "P")
    palette.putpalette([0, 0, 0, 128, 0, 0] + [0] * 762)
    palette.save(tmp_path / "label.png")
    # ... and a binary mask of the reference's top half at the working size (128 px)
    binary = np.zeros((128, 128), np.uint8)
    binary[:64] = 255
    Image.fromarray(binary).save(tmp_path / "top.png")
    out, report, regions = tmp_path / "o.png", tmp_path / "r.json", tmp_path / "regions"
    code, err = _cli(capsys, "run", content, style, *_run_options(model_dir, out, 128), "--content-mask",
                     tmp_path / "label.png", "--style-mask", f"1={tmp_path / 'top.png'}", "--report", report,
                     "--save-regions", regions, "--region-strength", "0=0.5", "--keep-colours")
    assert code == 0, err
    import json

    data = json.loads(report.read_text())
    assert set(data["user_masks"]) == {"0", "1"}
    assert data["settings"]["region_strength"] == {"0": 0.5} and data["settings"]["keep_colours"] is True
    content_regions = np.asarray(Image.open(regions / "regions_content.png"))  # the latent grid
    assert content_regions.shape == (16, 16)
    # the square is one region of its own; outside it, the clusters stay (the middle band's 4 x 2 cells above and
    # below the square are specks under min_region_size, which join their neighbour, the square)
    square = content_regions[2:14, 2:14]
    assert len(np.unique(square)) == 1 and (content_regions == square[0, 0]).sum() == 144 + 16
    assert len(np.unique(content_regions[:, :2])) == 1 and len(np.unique(content_regions)) == 3
    style_regions = np.asarray(Image.open(regions / "regions_style1.png"))
    assert len(np.unique(style_regions[:8])) == 1 and not (style_regions[8:] == style_regions[0, 0]).any()


def test_cli_mask_problems_exit_2_with_one_line(model_dir, images, tmp_path, capsys):
    from PIL import Image

    content, style = images
    Image.fromarray(np.zeros((96, 96), np.uint8)).save(tmp_path / "empty.png")
    Image.fromarray(np.full((50, 40), 255, np.uint8)).save(tmp_path / "small.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    noisy = np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)
    Image.fromarray(noisy).save(tmp_path / "photo.png")
    out = tmp_path / "o.png"
    cases = [
        (["--content-mask", tmp_path / "empty.png"], "is empty"),
        (["--content-mask", tmp_path / "small.png"], "is 40x50 pixels but must be 96x96 or 64x64"),
        (["--content-mask", tmp_path / "broken.png"], "cannot read the mask"),
        (["--content-mask", tmp_path / "nothere.png"], "mask file not found"),
        (["--content-mask", tmp_path / "photo.png"], "save it as PNG, not JPEG"),
        (["--style-mask", f"2={tmp_path / 'small.png'}"], "there are 1 references"),
        (["--style-mask", str(tmp_path / "small.png")], "--style-mask takes N=FILE"),
        (["--region-strength", "2:0.3"], "--region-strength: cannot read '2:0.3' as REGION=WEIGHT"),
        (["--region-strength", "2=-1"], "region_strength[2] must be at least 0"),
        (["--region-strength", "9=0.5"], "names region 9, but the content has"),
    ]
    for extra, message in cases:
        code, err = _cli(capsys, "run", content, style, *_run_options(model_dir, out), *extra)
        assert code == 2 and message in err and len(err.splitlines()) == 1, (extra, err)
        assert not out.exists()


def test_batch_plans_take_masks_and_region_weights(model_dir, images, tmp_path, capsys):
    import json

    from PIL import Image

    content, style = images
    label = np.zeros((96, 96, 3), np.uint8)
    label[:, 48:] = (255, 0, 0)
    Image.fromarray(label).save(tmp_path / "right.png")
    plan = tmp_path / "plan.csv"
    plan.write_text("content,styles,content_mask,region_strength,keep_colours\n"
                    f"{content.name},{style.name},right.png,0=0.5;1=2,true\n"
                    f"{content.name},{style.name},,,\n"
                    f"{content.name},{style.name},missing.png,,\n")
    out = tmp_path / "batch"
    code, err = _cli(capsys, "batch", plan, "-o", out, *_run_options(model_dir, out)[2:])
    assert code == 101, err  # the row whose mask is missing fails alone
    reports = {json.loads(p.read_text())["batch"]["row"]: json.loads(p.read_text())
               for p in out.glob("jobs/*/report.json")}
    assert set(reports) == {1, 2}
    assert reports[1]["user_masks"].keys() == {"0"} and reports[2]["user_masks"] is None
    assert reports[1]["settings"]["region_strength"] == {"0": 0.5, "1": 2.0}
    assert reports[1]["settings"]["keep_colours"] is True
    assert reports[1]["batch"]["mask_paths"] == {"0": str(tmp_path / "right.png")}
    failed = next(out.glob("jobs/*/error.json"))
    assert "mask file not found" in failed.read_text()


# ------------------------------------------------------------------------------------------ painting by hand
def test_brush_and_lasso_cover_the_cells_they_pass_over():
    from stylegallery.stages.painting import brush_cells, lasso_cells

    dab = brush_cells([[2.5, 3.5]], 0.5, (6, 8))
    assert np.argwhere(dab).tolist() == [[2, 3]]
    line = brush_cells([[1.5, 0.2], [1.5, 5.6]], 0.5, (4, 8))
    assert np.argwhere(line).tolist() == [[1, c] for c in range(6)]
    wide = brush_cells([[3.5, 3.5]], 1.5, (8, 8))  # centres within 1.5 cells: a plus of 5 and the 4 diagonals
    assert wide.sum() == 9 and wide[2:5, 2:5].all()
    square = lasso_cells([[1, 1], [1, 4], [4, 4], [4, 1]], (6, 6))
    assert np.argwhere(square).tolist() == [[r, c] for r in range(1, 4) for c in range(1, 4)]
    assert not lasso_cells([[1, 1], [3, 3]], (6, 6)).any()  # two points enclose nothing


def test_paint_erase_grow_and_shrink():
    from stylegallery.stages.painting import erase, grow, paint, shrink

    base = np.zeros((6, 6), np.int64)
    base[:, 3:] = 1
    cells = np.zeros((6, 6), bool)
    cells[2:4, 2:4] = True
    painted = paint(base, cells, None)
    assert (painted[cells] == 2).all() and (painted[~cells] == base[~cells]).all()
    assert (paint(base, cells, 1)[cells] == 1).all()  # into an existing region: it grows there
    assert np.array_equal(erase(painted, cells, base), base)
    grown = grow(painted, 2)
    assert (grown == 2).sum() == 4 + 8  # one cell out on every side of the 2 x 2 square (4-neighbours)
    shrunk = shrink(grown, 2)
    assert (shrunk == 2).sum() == 4 and set(np.unique(shrunk)) == {0, 1, 2}
    # the cells given up go to the nearest other region: left of column 3 region 0, right of it region 1
    assert shrunk[1, 2] == 0 and shrunk[1, 3] == 1
    assert np.array_equal(shrink(painted, 2), painted)  # a 2 x 2 region would vanish: it stays


def test_the_painter_paints_undoes_and_applies_to_the_session(pipe, planted_run):
    from stylegallery import Session
    from stylegallery.widgets import MaskPainter
    from synthetic import planted_scene

    (content, *refs), _ = planted_scene(256)
    session = Session(pipe, content, refs, size=256, use_depth=False, n_clusters=3)
    session.run("match", progress=False)
    before = session.segmentation
    painter = MaskPainter(session, index=0)
    # a lasso around rows 8..15, columns 8..15 of the 32 x 32 grid: a new region
    assert painter.stroke([[8, 8], [8, 16], [16, 16], [16, 8]], tool="lasso") > 0
    square = np.zeros((32, 32), bool)
    square[8:16, 8:16] = True
    new = int(painter.label_map()[8, 8])
    assert (painter.label_map()[square] == new).all() and not (painter.label_map()[~square] == new).any()
    assert painter.target == new == before.n_regions(0)  # the next stroke goes on painting the new region
    painter.grow()
    assert (painter.label_map() == new).sum() == 64 + 32
    painter.undo()
    assert (painter.label_map() == new).sum() == 64 and painter.can_undo
    painter.stroke([[12.5, 12.5]], tool="erase", radius=0.5)  # one cell back to the region it had
    assert painter.label_map()[12, 12] == before.labels[0, 12, 12]
    assert session.segmentation is before  # nothing reaches the session before apply
    painted = painter.apply()
    assert session.segmentation is painted and painted.n_regions(0) == before.n_regions(0) + 1
    assert session.matching is not None and len(session.matching.matches) == painted.n_regions(0)
    assert session.stale == ["stylize"] and painted.settings["edited"] is True
    assert painter.status.startswith(f"applied: {painted.n_regions(0)} regions; matched again")
    # a reference is painted the same way
    painter.show(1)
    painter.stroke([[0.5, 0.5], [0.5, 31.5]], tool="brush", radius=0.5, target=-1)
    assert painter.apply(match=False).n_regions(1) == painted.n_regions(1) + 1 and session.matching is None
    with pytest.raises(StyleGalleryError, match="nothing to undo"):
        painter.undo()
