"""Single-file checkpoints (the original Stable Diffusion layout, as fine-tunes are shared) through diffusers'
``from_single_file``: the same model as its diffusers folder, for every family, and clear errors for the rest."""

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from stylegallery import StyleGallery, StyleGalleryError
from stylegallery.testing import cached_test_models, save_single_file
from test_families import SD15, SD21, SDXL, _meta_unet


def _single_file(arch, tmp_path_factory):
    """(arch, the diffusers folder, the same weights as one original-layout .safetensors file)."""
    folder = cached_test_models(arch) / "sd"
    return arch, folder, save_single_file(folder, tmp_path_factory.mktemp("single") / "model.safetensors")


@pytest.fixture(scope="module", params=["tiny", "tiny-sd2", "tiny-sdxl"])
def single_file(request, tmp_path_factory):
    return _single_file(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def tiny_single_file(tmp_path_factory):
    return _single_file("tiny", tmp_path_factory)


def _state(module):
    return {k: v for k, v in module.state_dict().items()}


def test_a_single_file_loads_the_same_model_as_its_folder(single_file):
    arch, folder, path = single_file
    keys = set(load_file(path))
    assert any(k.startswith("model.diffusion_model.input_blocks.") for k in keys)  # the original layout, not ours
    assert not any(k.startswith(("unet.", "down_blocks.", "text_model.")) for k in keys)
    one = StyleGallery.from_single_file(str(path), config=str(folder), device="cpu")
    ref = StyleGallery.from_pretrained(str(folder), device="cpu")
    assert one.backbone.family == ref.backbone.family == {"tiny": "sd1", "tiny-sd2": "sd2", "tiny-sdxl": "sdxl"}[arch]
    for name in ("unet", "vae"):
        a, b = _state(getattr(one.backbone, name)), _state(getattr(ref.backbone, name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    # the text encoders (both, for SDXL) only show in the embedding they give
    torch.testing.assert_close(one.backbone.embedding, ref.backbone.embedding, rtol=0, atol=0)
    if arch == "tiny-sdxl":
        torch.testing.assert_close(one.backbone.pooled, ref.backbone.pooled, rtol=0, atol=0)
    assert one.scheduler.config.prediction_type == ref.scheduler.config.prediction_type
    assert type(one.scheduler) is type(ref.scheduler)
    assert one.recorder.layers == ref.recorder.layers
    # a make-test-model config brings its own DINOv2 and depth, as its folder does
    assert one.semantic_model is not None and one.depth_model is not None


def test_the_cli_stylizes_with_a_single_file_as_with_its_folder(tmp_path, capsys):
    from stylegallery.tools.cli import main
    from synthetic import planted

    assert main(["make-test-model", str(tmp_path / "m"), "--single-file"]) == 0
    assert "sd.safetensors" in capsys.readouterr().out
    planted(64, "bands")[0].save(tmp_path / "content.png")
    planted(64, "rows", ("yellow", "green", "red"))[0].save(tmp_path / "style.png")
    common = [str(tmp_path / "content.png"), str(tmp_path / "style.png"), "--size", "64", "--steps", "2",
              "--inversion-steps", "2", "--quiet"]
    assert main(["run", *common, "-o", str(tmp_path / "file.png"), "--model", str(tmp_path / "m" / "sd.safetensors"),
                 "--model-config", str(tmp_path / "m" / "sd")]) == 0, capsys.readouterr().err
    assert main(["run", *common, "-o", str(tmp_path / "folder.png"), "--model", str(tmp_path / "m" / "sd")]) == 0
    one, ref = (np.asarray(Image.open(tmp_path / f"{n}.png")) for n in ("file", "folder"))
    assert np.array_equal(one, ref)  # same weights, same seed: the same picture


@pytest.mark.parametrize("config", [SD15, SD21, SDXL], ids=["sd15", "sd21", "sdxl"])
def test_the_test_writer_gives_the_layout_diffusers_reads_for_the_published_configs(config):
    """The writer behind the test files (ours: diffusers only converts the other way) names every weight of the
    full UNets as diffusers' own converter expects (tiny models miss some cases: 2 layers a block, blocks
    without attention, the upsampler without one)."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    from stylegallery.testing.single_file import original_unet_key

    unet = _meta_unet(config)
    original = {"model.diffusion_model." + original_unet_key(k, unet.config): v for k, v in unet.state_dict().items()}
    assert len(original) == len(unet.state_dict())
    assert set(convert_ldm_unet_checkpoint(original, dict(unet.config))) == set(unet.state_dict())


def test_the_test_writer_gives_the_vae_layout_diffusers_reads_for_the_published_config():
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    from stylegallery.testing.single_file import original_vae_key

    with torch.device("meta"):  # SD's VAE: 4 levels of 2 resnets (3 in the decoder), 128 to 512 channels
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    original = {"first_stage_model." + original_vae_key(k, vae.config): v for k, v in vae.state_dict().items()}
    assert len(original) == len(vae.state_dict())
    assert set(convert_ldm_vae_checkpoint(original, dict(vae.config))) == set(vae.state_dict())


def test_a_ckpt_is_read_with_weights_only(tiny_single_file, tmp_path):
    _, folder, path = tiny_single_file
    torch.save({"state_dict": load_file(path)}, tmp_path / "model.ckpt")
    one = StyleGallery.from_single_file(str(tmp_path / "model.ckpt"), config=str(folder), semantic_model=False,
                                        depth_model=False, device="cpu")
    ref = StyleGallery.from_pretrained(str(folder), semantic_model=False, depth_model=False, device="cpu")
    torch.testing.assert_close(one.backbone.embedding, ref.backbone.embedding, rtol=0, atol=0)

    class Payload:  # what a malicious pickle would carry: weights_only refuses to build it
        def __reduce__(self):
            return (print, ("code ran",))

    torch.save({"state_dict": {"w": torch.zeros(1)}, "callback": Payload()}, tmp_path / "evil.ckpt")
    with pytest.raises(StyleGalleryError, match="safely: torch.load.weights_only=True. refused"):
        StyleGallery.from_single_file(str(tmp_path / "evil.ckpt"), config=str(folder), device="cpu")


def test_bad_single_files_get_clear_errors(tiny_single_file, tmp_path, capsys):
    from stylegallery.tools.cli import main

    _, folder, path = tiny_single_file
    other = cached_test_models("tiny-sdxl") / "sd"

    def refused(model, match, config=str(folder)):
        with pytest.raises(StyleGalleryError, match=match):
            StyleGallery.from_pretrained(str(model), config=config, semantic_model=False, depth_model=False, device="cpu")

    refused(tmp_path / "missing.safetensors", "checkpoint file not found")
    (tmp_path / "cut.safetensors").write_bytes(path.read_bytes()[:4000])
    refused(tmp_path / "cut.safetensors", "cannot read the checkpoint .*complete")
    save_file({"double_blocks.0.img_attn.norm.key_norm.scale": torch.zeros(2)}, tmp_path / "flux.safetensors")
    refused(tmp_path / "flux.safetensors", "not a Stable Diffusion UNet checkpoint.*SD3 or FLUX.*1.x, 2.x and XL")
    save_file({"conditioner.embedders.0.model.text_projection": torch.zeros(2, 2)}, tmp_path / "refiner.safetensors")
    refused(tmp_path / "refiner.safetensors", "SDXL refiner")
    refused(path, "does not fit the configs of .*tiny-sdxl.*its own family", config=str(other))
    refused(path, "base model folder not found", config=str(tmp_path / "nowhere"))
    refused(folder, "goes with a single-file checkpoint")
    refused("tiny", "goes with a single-file checkpoint")  # nor with a test model's name
    with pytest.raises(StyleGalleryError, match="from_pretrained"):
        StyleGallery.from_single_file(str(folder), device="cpu")
    # offline, with no config: diffusers would need its base model's configs from the Hub
    refused(path, "cannot load the checkpoint .*--model-config.*stable-diffusion-v1-5", config=None)
    Image.new("RGB", (64, 64), "red").save(tmp_path / "c.png")
    capsys.readouterr()
    code = main(["run", str(tmp_path / "c.png"), str(tmp_path / "c.png"), "-o", str(tmp_path / "o.png"), "--model",
                 str(tmp_path / "flux.safetensors"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "SD3 or FLUX" in err[0]
    assert not (tmp_path / "o.png").exists()
