"""A session re-runs only the stages a change makes stale."""

import pytest

from stylegallery import Session, StyleGalleryError


@pytest.fixture()
def session(pipe):
    from synthetic import planted

    content, _ = planted(128, "bands")
    style, _ = planted(128, "rows", ("yellow", "green", "red"))
    return Session(pipe, content, [style], size=128, inversion_steps=3, max_clusters=4, use_depth=False, steps=2)


def test_changing_a_setting_marks_that_stage_and_later_ones_stale(session):
    ran = []
    session.run(on_stage=lambda stage, result, seconds: ran.append(stage), progress=False)
    assert ran == ["prepare", "invert", "segment", "match", "stylize"] and session.stale == []
    assert session.set(c_ratio=0.5) == ["stylize"]
    assert session.set(semantic_weight=0.5) == ["match", "stylize"]
    assert session.set(max_clusters=3) == ["segment", "match", "stylize"]
    ran.clear()
    session.run(on_stage=lambda stage, result, seconds: ran.append(stage), progress=False)
    assert ran == ["segment", "match", "stylize"]
    assert session.set(max_clusters=3) == []  # same value: nothing to redo
    assert session.value("lr") == 0.05 and session.value("c_ratio") == 0.5


def test_edited_results_invalidate_later_stages(session, tmp_path):
    session.run("match", progress=False)
    matching = session.matching
    matching.keep_content(0)
    assert session.replace("match", matching) == ["stylize"]
    result = session.run(progress=False)
    assert result.history[0]["style_per_region"]["0"] == 0
    session.save(tmp_path)
    fresh = Session(session.pipe, session.content, session.styles)
    assert fresh.load(tmp_path) == []
    assert fresh.matching.matches[0] is None
    with pytest.raises(StyleGalleryError):
        session.set(colour="red")
    with pytest.raises(StyleGalleryError):
        session.replace("segment", matching)
