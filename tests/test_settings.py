"""Every stage's settings come from one declaration (stylegallery.settings) and every result records them."""

import inspect

import numpy as np
import pytest
import torch

from stylegallery import STAGES, Session, StyleGallery, StyleGalleryError
from stylegallery.settings import STAGE_SETTINGS, check_settings
from stylegallery.tools.batch import job_settings


def test_the_stage_methods_take_their_parameters_and_docs_from_the_declaration():
    for stage in STAGES:
        method = getattr(StyleGallery, stage)
        keywords = {n: p.default for n, p in inspect.signature(method).parameters.items() if p.kind is p.KEYWORD_ONLY}
        declared = STAGE_SETTINGS[stage]
        assert keywords == {s.name: s.default for s in declared}, stage
        for setting in declared:
            assert f"``{setting.name}``" in method.__doc__ and setting.doc in method.__doc__
        assert set(Session.parameters(stage)) == {s.name for s in declared if not s.runtime}
    assert set(job_settings()) == {s.name for d in STAGE_SETTINGS.values() for s in d if not s.runtime} | {"fast"}


def test_every_result_records_every_setting_that_made_it(pipe, planted_run):
    prepared, _, _ = planted_run
    inversion = pipe.invert(prepared, inversion_steps=4, weight_steepness=4.0, weight_midpoint=0.6, progress=False)
    mask = np.zeros((32, 32), dtype=np.int64)
    mask[:8, :8] = 1
    segment = dict(max_clusters=5, n_clusters=None, n_components=20, n_init=3, silhouette_sample=500,
                   merge_threshold=0.7, use_depth=True, depth_span=0.6, depth_merge_threshold=0.3, depth_difference=0.2,
                   user_masks={0: mask}, min_region_size=10, min_region_width=2, seed=3, region_source="clusters",
                   sam_points_per_side=8, sam_pred_iou_thresh=0.9, sam_stability_score_thresh=0.9, sam_crop_layers=0,
                   sam_merge_threshold=0.4)  # recorded too, though only region_source="sam" reads them
    segmentation = pipe.segment(prepared, inversion, progress=False, **segment)
    match = dict(statistical_weight=0.5, semantic_weight=0.9, geometric_weight=0.2, block_threshold=0.02,
                 semantic_size=112)
    matching = pipe.match(prepared, inversion, segmentation, **match)
    stylize = dict(steps=3, iters=2, lr=0.04, c_ratio=0.3, scheduler="ddim", query_scale=1.4, region_attention="masked",
                   loss_layers=list(pipe.default_loss_layers), feature_precision=torch.float32,
                   gradient_checkpointing=True)
    stylization = pipe.stylize(prepared, inversion, segmentation, matching, progress=False, **stylize)

    assert inversion.settings == {"inversion_steps": 4, "weight_steepness": 4.0, "weight_midpoint": 0.6}
    recorded = dict(segmentation.settings)
    assert recorded.pop("n_clusters") == [None, None, None] and recorded.pop("use_depth") is (pipe.depth_model is not None)
    masks = recorded.pop("user_masks")
    assert list(masks) == ["0"] and len(masks["0"]) == 16  # the mask, by its hash
    assert recorded == {k: v for k, v in segment.items() if k not in ("n_clusters", "use_depth", "user_masks")}
    assert matching.settings == match
    recorded = {k: stylization.settings[k] for k in stylize}
    assert recorded == dict(stylize, feature_precision="float32")
    assert not stylization.settings["warm"] and stylization.settings["start_step"] == 0
    options = {s.name for d in STAGE_SETTINGS.values() for s in d if s.runtime} - {"start_step"}  # where it started
    for result in (inversion, segmentation, matching, stylization):  # a result records no other option of a run
        assert not options & set(result.settings)


@pytest.mark.parametrize("call", [
    lambda pipe, prepared: pipe.invert(prepared, colour="red"),
    lambda pipe, prepared: pipe(prepared.image(0), [prepared.image(1)], colour="red"),
    lambda pipe, prepared: Session(pipe, prepared.image(0), [prepared.image(1)], colour="red"),
    lambda pipe, prepared: check_settings(colour="red"),
])
def test_an_unknown_setting_is_refused_everywhere(pipe, planted_run, call):
    with pytest.raises(StyleGalleryError, match="unknown .*setting.*colour"):
        call(pipe, planted_run[0])


def test_a_stage_refuses_a_missing_or_extra_input(pipe, planted_run):
    prepared, inversion, _ = planted_run
    with pytest.raises(TypeError, match="positional"):
        pipe.segment(prepared)
    with pytest.raises(TypeError, match="positional"):
        pipe.invert(prepared, inversion)
