"""SAM as the base regions (``region_source="sam"``, the release's ``use_sam``): the tiny random SAM loaded through the
normal loading code, the release's painting rule, the merge at ``sam_merge_threshold``, the release's thresholds,
bad input, and the paper's default left as it was."""

import json

import numpy as np
import pytest
import torch

from stylegallery import StyleGallery, StyleGalleryError
from stylegallery.models.sam import box_nms
from stylegallery.settings import STAGE_SETTINGS, check_settings
from stylegallery.stages.segmentation import masks_to_labels, segment_base_labels
from stylegallery.tools.cli import main

#: Masks from the tiny random SAM: its predicted IoU is ~0.003, so the release's thresholds keep none.
THRESHOLDS_OFF = dict(sam_pred_iou_thresh=0, sam_stability_score_thresh=0)
FEW_POINTS = dict(sam_points_per_side=4, progress=False)
DEFAULT_MERGE = STAGE_SETTINGS["segment"]["sam_merge_threshold"].default


@pytest.fixture(scope="module")
def sam_pipe(model_dir):
    """A pipe of its own (the session's ``pipe`` is shared) with the tiny SAM saved by ``make_test_models``:
    ``sam_model=True`` means a make-test-model folder's own SAM."""
    return StyleGallery.from_pretrained(str(model_dir / "sd"), semantic_model=False, depth_model=False, device="cpu",
                                        sam_model=True)


def release_painting(masks, grid):
    """The release's rule, written out: sort by area (largest first, Python's stable sort), paint mask i with i + 1
    over zeros, resize with torch's nearest neighbour."""
    order = sorted(range(len(masks)), key=lambda i: int(masks[i].sum()), reverse=True)
    painted = np.zeros(masks[0].shape, dtype=np.int32)
    for i, index in enumerate(order):
        painted[masks[index]] = i + 1
    resized = torch.nn.functional.interpolate(torch.from_numpy(painted).float()[None, None], size=grid, mode="nearest")
    return resized[0, 0].long().numpy()


def first_appearance(labels):
    """Labels renumbered 0.. in order of first appearance (row-major): two maps with the same regions become equal."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    return np.argsort(np.argsort(first))[inverse].reshape(labels.shape)


def linked_components(base, latent, threshold):
    """Regions of ``base`` whose mean latents lie closer than ``threshold``, joined transitively (union-find)."""
    values = np.unique(base)
    means = {v: latent[:, base == v].mean(axis=1) for v in values}
    parent = {v: v for v in values}

    def root(v):
        while parent[v] != v:
            v = parent[v]
        return v

    for a in values:
        for b in values:
            if np.linalg.norm(means[a] - means[b]) < threshold:
                parent[root(a)] = root(b)
    return first_appearance(np.vectorize(root)(base))


# ------------------------------------------------------------------------------------------ the release's painting
def test_masks_are_painted_largest_first_so_the_smaller_wins_and_uncovered_is_its_own_region():
    big = np.zeros((16, 16), dtype=bool)
    big[:12] = True  # 192 px
    small = np.zeros((16, 16), dtype=bool)
    small[8:, :8] = True  # 64 px, over the big one in rows 8..11
    labels = masks_to_labels([small, big], (4, 4))  # given smaller first: the order is the areas'
    assert labels.tolist() == [[1, 1, 1, 1],
                               [1, 1, 1, 1],
                               [2, 2, 1, 1],  # the overlap: the smaller mask, painted later
                               [2, 2, 0, 0]]  # covered by no mask: 0
    assert masks_to_labels([], (4, 4)).tolist() == np.zeros((4, 4), dtype=int).tolist()
    # equal areas keep their given order, so the later one is painted over the earlier
    left, right = np.zeros((8, 8), dtype=bool), np.zeros((8, 8), dtype=bool)
    left[:, :5], right[:, 3:] = True, True
    assert masks_to_labels([left, right], (8, 8))[0].tolist() == [1, 1, 1, 2, 2, 2, 2, 2]


@pytest.mark.parametrize("size,grid", [((64, 64), (8, 8)), ((60, 84), (7, 9)), ((33, 50), (8, 8))])
def test_the_painting_resizes_as_torch_nearest_like_the_release(size, grid):
    rng = np.random.default_rng(sum(size))
    masks = []
    for _ in range(6):
        mask = np.zeros(size, dtype=bool)
        y, x = rng.integers(0, size[0] - 4), rng.integers(0, size[1] - 4)
        mask[y : y + rng.integers(4, size[0]), x : x + rng.integers(4, size[1])] = True
        masks.append(mask)
    assert np.array_equal(masks_to_labels(masks, grid), release_painting(masks, grid))


def test_our_box_nms_keeps_the_best_and_drops_overlaps_above_the_threshold():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10], [0, 0, 10, 7],
                          [40, 40, 50, 50]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95, 0.6, 0.7])
    # 3 beats its duplicate 0 and 1 (IoU 0.81); 4 overlaps 3 by exactly 0.7, which is not above the threshold;
    # 2 and 5 tie and keep their order
    assert box_nms(boxes, scores, 0.7) == [3, 2, 5, 4]
    assert box_nms(torch.zeros(0, 4), torch.zeros(0)) == []


# ------------------------------------------------------------------------------------------ SAM through the pipeline
def test_the_tiny_sam_loads_from_its_saved_folder(sam_pipe, model_dir):
    from transformers import SamModel

    assert isinstance(sam_pipe.sam_model, SamModel) and sam_pipe.sam_name == str(model_dir / "sam")
    assert (model_dir / "sam" / "config.json").is_file() and (model_dir / "sam" / "processor_config.json").is_file()


@torch.no_grad()
def test_the_masks_are_sams_own_for_its_grid_of_points(sam_pipe, planted_run):
    # transformers' SAM called directly, one point prompt at a time, at the centres of a 2 x 2 grid (no crops)
    prepared, _, _ = planted_run
    image = prepared.image(0)
    model, processor = sam_pipe.sam_model, sam_pipe.sam_processor
    direct = []
    for y in (64, 192):
        for x in (64, 192):
            inputs = processor(images=image, input_points=[[[[x, y]]]], return_tensors="pt")
            out = model(**inputs, multimask_output=True)
            direct += list(processor.post_process_masks(out.pred_masks, inputs["original_sizes"],
                                                        inputs["reshaped_input_sizes"])[0][0].numpy())
    masks = sam_pipe.sam_masks(image, points_per_side=2, pred_iou_thresh=0, stability_score_thresh=0, crop_layers=0)
    assert masks and all(any(np.array_equal(mask, d) for d in direct) for mask in masks)


def test_sam_regions_are_the_masks_painted_as_the_release_paints_them(sam_pipe, planted_run):
    prepared, inversion, _ = planted_run
    grid = tuple(prepared.latents.shape[-2:])
    # no merge and no speck removal: the regions are the painted base labels themselves
    seg = sam_pipe.segment(prepared, inversion, region_source="sam", sam_merge_threshold=0, min_region_size=1,
                           **THRESHOLDS_OFF, **FEW_POINTS)
    for i in range(len(prepared.names)):
        masks = sam_pipe.sam_masks(prepared.image(i), points_per_side=4, pred_iou_thresh=0, stability_score_thresh=0)
        assert masks and all(m.dtype == bool and m.shape == (256, 256) for m in masks)
        expected = release_painting(masks, grid)
        assert np.array_equal(seg.labels[i].numpy(), first_appearance(expected))
        assert seg.chosen_k[i] == len(np.unique(expected))
    assert max(seg.chosen_k) >= 2  # not only the uncovered region
    assert seg.silhouette == [{}, {}, {}]
    assert seg.settings["region_source"] == "sam" and seg.settings["use_depth"] is False
    assert seg.settings["sam_points_per_side"] == 4 and seg.settings["sam_merge_threshold"] == 0


def test_sam_regions_merge_below_sam_merge_threshold(sam_pipe, planted_run):
    # the rule on a planted map: A-B and B-C are close, A-C is not (a chain merges all three), D is far away
    base = np.repeat(np.repeat(np.array([[0, 1], [2, 3]]), 16, axis=0), 16, axis=1)
    latent = np.zeros((4, 32, 32))
    for region, x in enumerate([0.0, 0.4, 0.8, 5.0]):
        latent[0][base == region] = x
    labels, silhouette, count = segment_base_labels(base, latent, sam_merge_threshold=0.5)
    assert silhouette == {} and count == 4
    assert labels.tolist() == linked_components(base, latent, 0.5).tolist()
    assert len(np.unique(labels)) == 2 and len(np.unique(labels[:16])) == 1
    assert len(np.unique(segment_base_labels(base, latent, sam_merge_threshold=0.3)[0])) == 4

    # through the pipeline: a threshold just above the base regions' distance merges them, one just below does not
    prepared, inversion, _ = planted_run
    options = dict(region_source="sam", min_region_size=1, **THRESHOLDS_OFF, **FEW_POINTS)
    base = sam_pipe.segment(prepared, inversion, sam_merge_threshold=0, **options)
    latent = prepared.latents[0].numpy()
    values = np.unique(base.labels[0].numpy())
    assert len(values) >= 2
    means = np.stack([latent[:, base.labels[0].numpy() == v].mean(axis=1) for v in values])
    distance = np.linalg.norm(means[:, None] - means[None], axis=-1)[np.triu_indices(len(values), 1)].min()
    counts = {}
    for threshold in (distance * 0.99, distance * 1.01, DEFAULT_MERGE):
        merged = sam_pipe.segment(prepared, inversion, sam_merge_threshold=float(threshold), **options)
        expected = linked_components(base.labels[0].numpy(), latent, threshold)
        assert merged.labels[0].tolist() == expected.tolist()
        counts[threshold] = merged.n_regions(0)
    assert counts[distance * 0.99] == len(values) and counts[distance * 1.01] < len(values)


def test_a_users_mask_overrides_sam_regions(sam_pipe, planted_run):
    prepared, inversion, _ = planted_run
    mask = np.zeros((32, 32), dtype=int)
    mask[4:14, 4:14] = 1
    seg = sam_pipe.segment(prepared, inversion, region_source="sam", user_masks={0: mask}, **THRESHOLDS_OFF,
                           **FEW_POINTS)
    inside = seg.labels[0][4:14, 4:14]
    assert (inside == inside[0, 0]).all() and not (seg.labels[0][mask == 0] == inside[0, 0]).any()


def test_the_releases_thresholds_on_random_weights_give_one_region_per_image(sam_pipe, planted_run):
    prepared, inversion, _ = planted_run
    seg = sam_pipe.segment(prepared, inversion, region_source="sam", progress=False)  # the release's settings
    assert [seg.n_regions(i) for i in range(3)] == [1, 1, 1] and seg.chosen_k == [1, 1, 1]
    assert seg.settings["sam_pred_iou_thresh"] == 0.98 and seg.settings["sam_crop_layers"] == 1


# ------------------------------------------------------------------------------------------ bad input
def test_sam_without_a_loaded_sam_or_with_bad_settings_is_a_clear_error(pipe, sam_pipe, planted_run, images):
    prepared, inversion, _ = planted_run
    assert pipe.sam_model is None
    with pytest.raises(StyleGalleryError, match="load_sam"):
        pipe.segment(prepared, inversion, region_source="sam", progress=False)
    with pytest.raises(StyleGalleryError, match="load_sam"):  # before any stage runs
        pipe(*images, region_source="sam", progress=False)
    with pytest.raises(StyleGalleryError, match="region_source must be one of clusters, sam"):
        pipe.segment(prepared, inversion, region_source="slic", progress=False)
    for bad in (dict(sam_pred_iou_thresh=1.5), dict(sam_stability_score_thresh=-0.1), dict(sam_points_per_side=0),
                dict(sam_crop_layers=-1), dict(sam_merge_threshold=float("nan"))):
        with pytest.raises(StyleGalleryError):
            check_settings(**bad)
    with pytest.raises(StyleGalleryError, match="n_clusters"):
        sam_pipe.segment(prepared, inversion, region_source="sam", n_clusters=3, progress=False)


def test_cli_sam_that_cannot_be_loaded_is_one_line(model_dir, images, tmp_path, capsys):
    code = main(["run", *map(str, images), "-o", str(tmp_path / "o.png"), "--model", str(model_dir / "sd"),
                 "--no-semantic", "--no-depth", "--sam", str(tmp_path / "nonexistent"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "SAM" in err and "not found" in err, err
    assert not (tmp_path / "o.png").exists()


def test_cli_batch_plan_asking_for_sam_without_sam_is_refused(images, tmp_path, capsys):
    plan = tmp_path / "plan.csv"
    plan.write_text(f"content,styles,region_source\n{images[0]},{images[1]},clusters\n{images[0]},{images[1]},sam\n")
    code = main(["batch", str(plan), "-o", str(tmp_path / "out"), "--model", "tiny", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "row 2" in err and "--sam" in err, err


def test_cli_run_with_sam_uses_the_test_models_own_sam(model_dir, images, tmp_path, capsys):
    report = tmp_path / "r.json"
    code = main(["run", *map(str, images), "-o", str(tmp_path / "o.png"), "--model", str(model_dir / "sd"),
                 "--no-semantic", "--no-depth", "--size", "64", "--steps", "1", "--inversion-steps", "1",
                 "--report", str(report), "--sam", "--quiet"])
    assert code == 0, capsys.readouterr().err
    written = json.loads(report.read_text())
    assert written["settings"]["region_source"] == "sam" and written["silhouette"] == [{}, {}]
    assert written["regions"] == {"content": 1, "style1": 1}  # the release's thresholds: no mask from random weights


def test_cli_batch_with_sam_takes_region_source_from_the_plan(model_dir, images, tmp_path, capsys):
    import csv

    plan = tmp_path / "plan.csv"
    plan.write_text(f"content,styles,region_source\n{images[0]},{images[1]},clusters\n{images[0]},{images[1]},\n")
    code = main(["batch", str(plan), "-o", str(tmp_path / "out"), "--model", str(model_dir / "sd"), "--no-semantic",
                 "--no-depth", "--size", "64", "--steps", "1", "--inversion-steps", "1", "--max-clusters", "2",
                 "--sam", "--quiet"])
    assert code == 0, capsys.readouterr().err
    with open(tmp_path / "out" / "summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    # the row's own value wins; an empty cell takes --sam's
    assert [json.loads(r["settings"])["region_source"] for r in rows] == ["clusters", "sam"]
    assert {r["status"] for r in rows} == {"done"}
    reports = [json.loads((tmp_path / "out" / "jobs" / r["job"] / "report.json").read_text()) for r in rows]
    assert reports[0]["silhouette"][0] and reports[1]["silhouette"] == [{}, {}]


# ------------------------------------------------------------------------------------------ the paper's default
def test_the_default_segmentation_is_the_clusters_unchanged(pipe, sam_pipe, planted_run):
    prepared, inversion, _ = planted_run
    default = pipe.segment(prepared, inversion, progress=False)
    named = pipe.segment(prepared, inversion, region_source="clusters", progress=False)
    assert torch.equal(default.labels, named.labels) and default.chosen_k == named.chosen_k
    assert default.silhouette == named.silhouette and default.settings == named.settings
    assert default.settings["region_source"] == "clusters" and all(default.silhouette)
    # a loaded SAM changes nothing unless asked for
    without_depth = pipe.segment(prepared, inversion, use_depth=False, progress=False)
    with_sam_loaded = sam_pipe.segment(prepared, inversion, use_depth=False, progress=False)
    assert torch.equal(without_depth.labels, with_sam_loaded.labels)
    assert without_depth.silhouette == with_sam_loaded.silhouette
