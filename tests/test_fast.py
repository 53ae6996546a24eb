"""Fast mode (a LoRA fused for stylize), warm re-runs from an earlier result, and latent previews."""

import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from stylegallery import Session, StyleGallery, StyleGalleryError
from stylegallery.tools.cli import main
from stylegallery.models.backbone import fingerprint


@pytest.fixture(scope="module")
def lora_pipe(model_dir):
    """A pipeline of its own (the LoRA changes its UNet), with the test models' random LoRA loaded."""
    return StyleGallery.from_pretrained(str(model_dir / "sd"), semantic_model=False, depth_model=False, device="cpu",
                                        lora=str(model_dir / "lora"))


@pytest.fixture(scope="module")
def scene(lora_pipe):
    """Stages up to match, on the base model (the LoRA is not fused for them)."""
    from synthetic import planted_scene

    (content, *refs), _ = planted_scene(128)
    prepared = lora_pipe.prepare(content, refs, size=128)
    inversion = lora_pipe.invert(prepared, inversion_steps=4, progress=False)
    segmentation = lora_pipe.segment(prepared, inversion, n_clusters=3, use_depth=False, progress=False)
    return prepared, inversion, segmentation, lora_pipe.match(prepared, inversion, segmentation)


def _base_state(model_dir):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(str(model_dir / "sd"), subfolder="unet").state_dict()


def _unet_state(pipe):
    """The UNet's weights under their base names (peft wraps adapted layers as ``<name>.base_layer``)."""
    return {k.replace(".base_layer", ""): v for k, v in pipe.unet.state_dict().items() if "lora_" not in k}


def test_lora_changes_stylize_and_unfusing_restores_the_base_model_exactly(lora_pipe, scene, model_dir):
    base = _base_state(model_dir)
    result = lora_pipe.stylize(*scene, steps=2, progress=False)
    assert lora_pipe.lora.fused and result.settings["lora"]["source"] == str(model_dir / "lora")
    fused = _unet_state(lora_pipe)
    assert any(not torch.equal(fused[k], base[k]) for k in base)  # the LoRA is in the weights
    # the inversion (and so clustering and matching) needs the base model: running it unfuses the LoRA
    lora_pipe.invert(scene[0], inversion_steps=5, progress=False)
    assert not lora_pipe.lora.fused
    restored = _unet_state(lora_pipe)
    assert all(torch.equal(restored[k], base[k]) for k in base)
    lora_pipe.unload_lora_weights()
    assert lora_pipe.unet.state_dict().keys() == base.keys()
    assert fingerprint(lora_pipe.unet, lora_pipe.vae, name=lora_pipe.backbone.name) == lora_pipe.backbone.fingerprint
    lora_pipe.load_lora_weights(str(model_dir / "lora"))


def test_the_model_fingerprint_and_cache_keys_include_the_lora(lora_pipe, scene, model_dir, pipe):
    with_lora = lora_pipe.stylize(*scene, steps=3, progress=False)
    fused_model = lora_pipe.stylize_model
    assert fused_model != lora_pipe.backbone.fingerprint and with_lora.settings["model"] == fused_model
    lora_pipe.unload_lora_weights()
    try:
        # a run without the LoRA recomputes its features (never served the fused model's) and so equals a run
        # on a pipeline that never saw a LoRA
        without = lora_pipe.stylize(*scene, steps=3, progress=False)
        plain = StyleGallery.from_pretrained(str(model_dir / "sd"), semantic_model=False, depth_model=False, device="cpu")
        reference = plain.stylize(*scene, steps=3, progress=False)
        assert torch.equal(without.latent, reference.latent)
        assert not torch.allclose(without.latent, with_lora.latent)
        assert without.settings["lora"] is None and without.settings["model"] == lora_pipe.backbone.fingerprint
    finally:
        lora_pipe.load_lora_weights(str(model_dir / "lora"))
    again = lora_pipe.stylize(*scene, steps=3, progress=False)
    assert torch.equal(again.latent, with_lora.latent)  # same seed and settings, same result


def test_inversion_runs_on_the_base_model(lora_pipe, scene, model_dir):
    plain = StyleGallery.from_pretrained(str(model_dir / "sd"), semantic_model=False, depth_model=False, device="cpu")
    lora_pipe.stylize(*scene, steps=1, progress=False)  # leaves the LoRA fused
    lora_pipe.inversion_cache.clear()
    ours = lora_pipe.invert(scene[0], inversion_steps=4, progress=False)
    theirs = plain.invert(scene[0], inversion_steps=4, progress=False)
    assert torch.equal(ours.features, theirs.features) and torch.equal(ours.final_latents, theirs.final_latents)


def test_presets_set_the_release_values_and_the_scheduler_timesteps(lora_pipe, scene):
    from diffusers import EulerDiscreteScheduler, LCMScheduler

    lcm = lora_pipe.use_preset("fast")
    assert lcm == dict(steps=28, iters=3, lr=0.25, c_ratio=0.33, scheduler="lcm")
    assert lora_pipe.use_preset("hyper-sd") == dict(steps=28, iters=3, lr=0.15, c_ratio=0.38, scheduler="euler-trailing")
    # a LoRA of the user's own is kept: the preset gives only its settings
    assert lora_pipe.lora is not None and lora_pipe.lora_preset is None
    result = lora_pipe.stylize(*scene, **dict(lcm, steps=4), progress=False)
    expected = LCMScheduler.from_config(lora_pipe.scheduler.config)
    expected.set_timesteps(4)
    assert [h["timestep"] for h in result.history] == [int(t) for t in expected.timesteps for _ in range(3)]
    euler = EulerDiscreteScheduler.from_config(lora_pipe.scheduler.config, timestep_spacing="trailing")
    euler.set_timesteps(5)
    result = lora_pipe.stylize(*scene, steps=5, iters=1, scheduler="euler-trailing", progress=False)
    assert [h["timestep"] for h in result.history] == [round(float(t)) for t in euler.timesteps]
    assert result.history[0]["timestep"] == 999
    with pytest.raises(StyleGalleryError, match="at most 50"):
        lora_pipe.stylize(*scene, steps=60, scheduler="lcm", progress=False)
    with pytest.raises(StyleGalleryError, match="unknown preset"):
        lora_pipe.use_preset("turbo")


def test_a_preset_loads_its_lora_and_settings_given_win():
    pipe = StyleGallery.from_pretrained("tiny", device="cpu", semantic_model=False, depth_model=False)
    from synthetic import planted_scene

    (content, *refs), _ = planted_scene(64)
    out = pipe(content, refs, size=64, preset="fast", steps=2, inversion_steps=2, max_clusters=3, progress=False)
    settings = out.stylization.settings
    assert (settings["steps"], settings["iters"], settings["lr"], settings["scheduler"]) == (2, 3, 0.25, "lcm")
    assert settings["lora"]["source"].endswith("lora") and pipe.lora_preset == "lcm"
    assert len(out.stylization.history) == 6


def test_a_make_test_model_folder_brings_its_lora_to_the_presets(model_dir):
    pipe = StyleGallery.from_pretrained(str(model_dir / "sd"), semantic_model=False, depth_model=False, device="cpu")
    assert pipe.use_preset("hyper-sd")["scheduler"] == "euler-trailing"
    assert pipe.lora.info.source == str(model_dir / "lora") and pipe.lora_preset == "hyper-sd"


def test_a_lora_that_cannot_be_loaded_is_a_clear_error(model_dir, tmp_path, pipe):
    state = load_file(str(model_dir / "lora" / "pytorch_lora_weights.safetensors"))
    cases = {
        "missing": (tmp_path / "nowhere", "not found"),
        "not a lora": (tmp_path / "weights.safetensors", "not a LoRA"),
        "wrong shapes": (tmp_path / "wrong", "does not fit this UNet"),
        "text encoder": (tmp_path / "te", "text encoder"),
    }
    save_file({"conv.weight": torch.zeros(2, 2)}, str(cases["not a lora"][0]))
    wrong = {k: torch.zeros(*(s + 3 for s in v.shape)) if v.ndim else v for k, v in state.items()}
    (tmp_path / "wrong").mkdir()
    save_file(wrong, str(tmp_path / "wrong" / "pytorch_lora_weights.safetensors"))
    te = dict(state, **{"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.zeros(4, 32),
                        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": torch.zeros(32, 4),
                        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha": torch.tensor(4.0)})
    (tmp_path / "te").mkdir()
    save_file(te, str(tmp_path / "te" / "pytorch_lora_weights.safetensors"))
    fresh = StyleGallery.from_pretrained(str(model_dir / "sd"), semantic_model=False, depth_model=False, device="cpu")
    before = fresh.unet.state_dict()
    for name, (source, message) in cases.items():
        with pytest.raises(StyleGalleryError, match=message):
            fresh.load_lora_weights(str(source))
        assert fresh.lora is None, name
        after = fresh.unet.state_dict()  # nothing half-loaded is left in the UNet
        assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before), name


def test_cli_fast_with_a_lora_folder_end_to_end(model_dir, tmp_path, capsys):
    from synthetic import planted

    content, _ = planted(64, "bands")
    style, _ = planted(64, "rows", ("yellow", "green", "red"))
    content.save(tmp_path / "c.png")
    style.save(tmp_path / "s.png")
    out, report = tmp_path / "out.png", tmp_path / "r.json"
    code = main([str(a) for a in ["run", tmp_path / "c.png", tmp_path / "s.png", "-o", out, "--model", model_dir / "sd",
                                  "--no-semantic", "--no-depth", "--size", 64, "--inversion-steps", 2, "--fast",
                                  "--lora", model_dir / "lora", "--steps", 2, "--report", report, "--quiet"]])
    assert code == 0, capsys.readouterr().err
    data = json.loads(report.read_text())
    assert data["lora"]["source"] == str(model_dir / "lora") and len(data["lora"]["digest"]) == 16
    assert data["settings"]["fast"] == "lcm" and data["settings"]["scheduler"] == "lcm"
    assert (data["settings"]["steps"], data["settings"]["iters"], data["settings"]["c_ratio"]) == (2, 3, 0.33)
    assert len(data["loss_history"]) == 6 and Image.open(out).size == (64, 64)
    code = main([str(a) for a in ["run", tmp_path / "c.png", tmp_path / "s.png", "-o", tmp_path / "o2.png",
                                  "--model", model_dir / "sd", "--no-semantic", "--no-depth", "--lora",
                                  tmp_path / "missing-lora", "--quiet"]])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "LoRA" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o2.png").exists()


# ---------------------------------------------------------------- warm re-runs
def test_a_warm_rerun_continues_from_the_earlier_latent_over_the_last_timesteps(pipe, planted_stages):
    cold = pipe.stylize(*planted_stages, steps=10, progress=False)
    seen = []
    warm = pipe.stylize(*planted_stages, steps=10, init=cold, callback=lambda info: seen.append(info.latent), progress=False)
    assert [h["step"] for h in warm.history] == list(range(8, 11))  # the last 30% of 10 timesteps
    assert [h["timestep"] for h in warm.history] == [h["timestep"] for h in cold.history[7:]]
    assert warm.settings["warm"] and warm.settings["start_step"] == 7 and not cold.settings["warm"]
    # it started from the earlier latent: one Adam step away from it (at most lr per element), not from z_T
    assert (seen[0] - cold.latent).abs().max() <= 0.05 + 1e-6
    explicit = pipe.stylize(*planted_stages, steps=10, init=cold, start_step=2, progress=False)
    assert [h["step"] for h in explicit.history] == list(range(3, 11))


def test_a_stopped_run_resumes_where_it_stopped(pipe, planted_stages):
    stopped = pipe.stylize(*planted_stages, steps=8, iters=2, callback=lambda info: info.step >= 6, progress=False)
    assert stopped.stopped_early and stopped.history[-1]["step"] == 6
    resumed = pipe.stylize(*planted_stages, steps=8, iters=2, init=stopped, progress=False)
    assert [h["step"] for h in resumed.history] == list(range(7, 17))
    assert resumed.history[0]["timestep"] == resumed.history[1]["timestep"] != stopped.history[-1]["timestep"]


@pytest.mark.parametrize("case, message", [
    ("no init", "start_step needs init"),
    ("too late", "start_step must be below"),
    ("other size", "another size"),
    ("not a result", "must be an earlier Stylization"),
])
def test_impossible_warm_reruns_are_refused(pipe, planted_stages, case, message):
    cold = pipe.stylize(*planted_stages, steps=2, progress=False)
    kwargs = {"no init": dict(start_step=1), "too late": dict(init=cold, start_step=2),
              "other size": dict(init=type(cold)(cold.latent[..., :8, :8], cold.pixels, [], False, cold.settings)),
              "not a result": dict(init=cold.latent)}[case]
    with pytest.raises(StyleGalleryError, match=message):
        pipe.stylize(*planted_stages, steps=2, progress=False, **kwargs)


def test_session_refines_after_a_match_override_and_says_so(pipe):
    from synthetic import planted_scene

    (content, *refs), _ = planted_scene(128)
    session = Session(pipe, content, refs, size=128, steps=10, n_clusters=3, use_depth=False)
    session.run(progress=False)
    assert session.last_run == "started over" and len(session.stylization.history) == 10
    matching = copy.deepcopy(session.matching)
    matching.override(0, *next(c for c in matching.columns if c != matching.matches[0]))
    session.replace("match", matching)
    assert session.stale == ["stylize"]
    session.run(progress=False, refine=True)
    assert session.last_run.startswith("refined from the last result") and len(session.stylization.history) == 3
    session.set(c_ratio=0.5)
    session.run(progress=False)
    assert session.last_run == "started over" and len(session.stylization.history) == 10
    # a run stopped early is current, but refine resumes it where it stopped
    session.set(c_ratio=0.6)
    session.run(progress=False, callback=lambda info: info.step >= 4)
    assert session.stylization.stopped_early and session.stale == []
    session.run(progress=False, refine=True)
    assert [h["step"] for h in session.stylization.history] == list(range(5, 11))
    assert session.last_run.startswith("refined") and not session.stylization.stopped_early


def test_a_stylization_made_with_another_lora_is_stale(model_dir):
    from synthetic import planted_scene

    pipe = StyleGallery.from_pretrained(str(model_dir / "sd"), semantic_model=False, depth_model=False, device="cpu")
    (content, *refs), _ = planted_scene(64)
    session = Session(pipe, content, refs, size=64, steps=2, inversion_steps=2, n_clusters=2)
    session.run(progress=False)
    pipe.load_lora_weights(str(model_dir / "lora"))  # e.g. another session switched to a fast preset
    assert session.stale == ["stylize"]
    session.run(progress=False)
    assert session.stylization.settings["lora"] is not None and session.stale == []


# ---------------------------------------------------------------- previews
def test_the_linear_preview_shows_the_decoded_colours(pipe, planted_stages):
    """The tiny VAE decodes a latent through the inverse of SD 1.5's linear fit, so the linear preview must
    match the decoded image averaged over 8 x 8 blocks."""
    infos = []
    result = pipe.stylize(*planted_stages, steps=4, preview_every=1, callback=infos.append, progress=False)
    assert [i.preview is not None for i in infos] == [True] * 4
    preview = np.asarray(infos[-1].preview, dtype=float)
    decoded = np.asarray(result.image, dtype=float)
    blocks = decoded.reshape(preview.shape[0], 8, preview.shape[1], 8, 3).mean(axis=(1, 3))
    assert preview.shape == (32, 32, 3) and np.abs(preview - blocks).mean() < 3.0
    assert np.asarray(pipe.preview(result.latent, "vae")).shape == (256, 256, 3)


def test_tiny_vae_previews_load_through_diffusers(pipe, tmp_path, planted_stages):
    from diffusers import AutoencoderTiny

    AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                    num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1)).save_pretrained(tmp_path / "taesd")
    with pytest.raises(StyleGalleryError, match="not found"):
        pipe.load_tiny_vae(str(tmp_path / "missing"))
    pipe.load_tiny_vae(str(tmp_path / "taesd"))
    try:
        infos = []
        pipe.stylize(*planted_stages, steps=2, preview_every=2, preview="tiny-vae", callback=infos.append, progress=False)
        assert infos[0].preview is None and infos[1].preview.size == (256, 256)
    finally:
        pipe._tiny_vae = None
