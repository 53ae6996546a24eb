"""Stable Diffusion families: the family and the layer roles from the configs, SD 2.x and SDXL end to end (tiny)."""

import json
import math
import os
from pathlib import Path

import pytest
import torch

from stylegallery import StyleGallery, StyleGalleryError
from stylegallery.stages.attention import default_loss_layers, feature_block_index, self_attention_names
from stylegallery.models.families import family_of
from stylegallery.stages.inversion import eps_from_v

ROOT = Path(__file__).resolve().parent.parent

# the published UNet configs (only the values that shape the network)
SD15 = dict(sample_size=64, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768,
            attention_head_dim=8, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SD21 = dict(SD15, sample_size=96, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
            use_linear_projection=True)
SDXL = dict(sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2, cross_attention_dim=2048,
            attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)


def _meta_unet(config):
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):  # the structure only: no memory for the weights
        return UNet2DConditionModel(**config)


@pytest.mark.parametrize("config, family, layers, loss, feature", [
    (SD15, "sd1", 16, [f"up_blocks.{b}.attentions.{a}.transformer_blocks.0" for b in (2, 3) for a in range(3)], 2),
    (SD21, "sd2", 16, [f"up_blocks.{b}.attentions.{a}.transformer_blocks.0" for b in (2, 3) for a in range(3)], 2),
    # SDXL: attention only in up_blocks 0 (10 stacked layers a module) and 1 (2 a module); 70 self-attention layers
    (SDXL, "sdxl", 70, [f"up_blocks.{b}.attentions.{a}.transformer_blocks.0" for b in (0, 1) for a in range(3)], 1),
])
def test_the_family_and_layer_roles_come_from_the_published_configs(config, family, layers, loss, feature):
    unet = _meta_unet(config)
    assert family_of(dict(unet.config)) == family
    names = self_attention_names(unet)
    assert len(names) == layers
    chosen = [names[i].removesuffix(".attn1.processor") for i in default_loss_layers(unet)]
    assert sorted(chosen) == sorted(loss)
    assert feature_block_index(unet) == feature  # the first decoder block whose output is at full latent resolution
    if family == "sd1":
        assert default_loss_layers(unet) == list(range(10, 16))  # the layers docs/method.md names


def test_eps_from_v_inverts_the_v_parameterisation():
    generator = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 4, 8, 8, generator=generator)
    for alpha in (0.9991, 0.5, 0.0047):
        x_t = math.sqrt(alpha) * x0 + math.sqrt(1 - alpha) * eps
        v = math.sqrt(alpha) * eps - math.sqrt(1 - alpha) * x0
        torch.testing.assert_close(eps_from_v(v, x_t, alpha), eps, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module", params=["tiny-sd2", "tiny-sdxl"])
def family_models(request, tmp_path_factory):
    from stylegallery.testing import make_test_models

    return request.param, make_test_models(tmp_path_factory.mktemp(request.param), request.param)


def test_the_pipeline_and_cli_run_on_the_other_families(family_models, tmp_path, capsys):
    from stylegallery.tools.cli import main
    from synthetic import planted

    arch, folder = family_models
    planted(64, "bands")[0].save(tmp_path / "content.png")
    planted(64, "rows", ("yellow", "green", "red"))[0].save(tmp_path / "style.png")
    report = tmp_path / "report.json"
    code = main(["run", str(tmp_path / "content.png"), str(tmp_path / "style.png"), "-o", str(tmp_path / "out.png"),
                 "--model", str(folder / "sd"), "--semantic-model", str(folder / "dinov2"), "--depth-model",
                 str(folder / "depth"), "--size", "64", "--steps", "2", "--inversion-steps", "2", "--report", str(report),
                 "--quiet"])
    assert code == 0, capsys.readouterr().err
    data = json.loads(report.read_text())
    assert len(data["loss_history"]) == 2 and all(math.isfinite(h["total"]) for h in data["loss_history"])

    pipe = StyleGallery.from_pretrained(str(folder / "sd"), semantic_model=False, depth_model=False, device="cpu")
    family = {"tiny-sd2": "sd2", "tiny-sdxl": "sdxl"}[arch]
    assert pipe.backbone.family == family
    if family == "sd2":
        assert pipe.scheduler.config.prediction_type == "v_prediction"
        with pytest.raises(StyleGalleryError, match="no fast preset for sd2"):
            pipe.use_preset("fast")
    else:
        # the loss layers: the first of the two stacked transformer layers of each decoder attention module
        names = self_attention_names(pipe.unet)
        assert all(".transformer_blocks.0." in names[i] for i in pipe.recorder.layers)
        assert len(names) > len([n for n in names if ".transformer_blocks.0." in n])
        conditions = pipe.backbone.added_conditions(2, (64, 128))
        assert conditions["time_ids"].tolist() == [[64, 128, 0, 0, 64, 128]] * 2
        assert conditions["text_embeds"].shape == (2, pipe.backbone.pooled.shape[-1])
        assert pipe.backbone.embedding.shape[-1] == pipe.unet.config.cross_attention_dim
        # the SDXL presets: their LoRA (here the test folder's random one, made for this UNet) fused for stylize
        settings = pipe.use_preset("fast")
        assert settings["scheduler"] == "lcm" and pipe.lora is not None
        prepared = pipe.prepare(tmp_path / "content.png", [tmp_path / "style.png"], size=64)
        inversion = pipe.invert(prepared, inversion_steps=2, progress=False)
        segmentation = pipe.segment(prepared, inversion, n_clusters=2, use_depth=False, progress=False)
        matching = pipe.match(prepared, inversion, segmentation)
        fast = pipe.stylize(prepared, inversion, segmentation, matching, **dict(settings, steps=2), progress=False)
        assert fast.settings["lora"] is not None and all(math.isfinite(h["total"]) for h in fast.history)


@pytest.mark.parametrize("config, native", [(SD15, 512), (SD21, 768), (SDXL, 1024)])
def test_the_default_window_is_the_native_size_of_the_published_configs(config, native):
    assert config["sample_size"] * 8 == native  # what StyleGallery.native_size reads


def test_output_size_refines_in_windows_on_the_other_families(family_models, tmp_path):
    from synthetic import planted

    _, folder = family_models
    pipe = StyleGallery.from_pretrained(str(folder / "sd"), semantic_model=False, depth_model=False, device="cpu")
    content, style = planted(64, "bands")[0], planted(64, "rows", ("yellow", "green", "red"))[0]
    out = pipe(content, [style], size=64, steps=3, inversion_steps=2, n_clusters=2, use_depth=False,
               output_size=(192, 256), window=64, progress=False)
    refined = out.stylization.settings["output"]
    assert out.image.size == (256, 192) and refined["window"] == 64
    assert refined["windows"] == len(pipe.window_plan((192, 256), 64).windows) == 4 * 5  # every 48 px
    # without window=, the windows have the UNet's native size
    assert pipe.window_plan((192, 256)).window * 8 == pipe.native_size == pipe.unet.config.sample_size * 8
    assert all(math.isfinite(h["total"]) for h in out.stylization.output_history)


def test_a_saved_result_of_one_family_is_refused_by_another(family_models, pipe, planted_run, tmp_path):
    from stylegallery import Prepared

    _, folder = family_models
    other = StyleGallery.from_pretrained(str(folder / "sd"), semantic_model=False, depth_model=False, device="cpu")
    prepared, inversion, _ = planted_run  # made by the SD 1.x test pipeline
    saved = Prepared.load(prepared.save(tmp_path / "prepared"))
    with pytest.raises(StyleGalleryError, match="another model"):
        other.invert(saved, progress=False)


def test_a_diffusion_transformer_is_refused_with_the_supported_families(tmp_path, capsys):
    from stylegallery.tools.cli import main

    folder = tmp_path / "flux"
    (folder / "transformer").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(StyleGalleryError, match="FluxPipeline without a UNet .a diffusion transformer.*1.x, 2.x and XL"):
        StyleGallery.from_pretrained(str(folder), semantic_model=False, depth_model=False, device="cpu")
    (tmp_path / "c.png").write_bytes((ROOT / "data" / "content_cat.jpg").read_bytes())
    assert main(["run", str(tmp_path / "c.png"), str(tmp_path / "c.png"), "-o", str(tmp_path / "o.png"), "--model",
                 str(folder), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "diffusion transformer" in err[0]


def test_a_notebook_runs_on_the_tiny_sdxl(tmp_path_factory):
    """The quickstart notebook, every cell, with MODEL set to a tiny SDXL folder through its parameters cell."""
    import nbformat
    from nbclient import NotebookClient
    from stylegallery.testing import make_test_models

    folder = make_test_models(tmp_path_factory.mktemp("sdxl-notebook"), "tiny-sdxl")
    nb = nbformat.read(str(ROOT / "notebooks" / "01_quickstart.ipynb"), as_version=4)
    env = {"STYLEGALLERY_MODEL": str(folder / "sd"), "STYLEGALLERY_SIZE": "64", "STYLEGALLERY_STEPS": "2",
           "STYLEGALLERY_INVERSION_STEPS": "2", "STYLEGALLERY_MAX_CLUSTERS": "3", "HF_HUB_OFFLINE": "1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        NotebookClient(nb, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert f"backbone {folder / 'sd'} on cpu" in printed  # the SDXL folder, not the default SD 1.5, ran every cell
