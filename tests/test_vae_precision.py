"""The VAE's precision (README, "The VAE's precision"). In float16, a VAE whose config sets ``force_upcast`` encodes
and decodes in float32, as diffusers' pipelines do; with the flag false it runs in float16.

The test VAE overflows float16 inside, as SDXL's does, while its weights stay float16 numbers. It is the tiny
colour-keeping VAE with one layer of the encoder and one of the decoder scaled up, so activations reach 120000,
past float16's largest number (65504). A GroupNorm after them undoes the scale, so in float32 the VAE gives the
same pictures as before.
"""

import shutil

import numpy as np
import pytest
import torch

from stylegallery import StyleGallery
from stylegallery.testing import cached_test_models, save_single_file

SIZE = 64


def _overflowing_vae(sd_folder, force_upcast: bool) -> None:
    """Scale the tiny colour VAE of ``sd_folder`` so that it overflows float16, and set its ``force_upcast``."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(sd_folder, subfolder="vae")
    enc, dec = vae.encoder, vae.decoder
    with torch.no_grad():
        # encoder: the shortcut whose weights of +-1000 make the constant channels, times 60 (60000 is a float16
        # number), then the downsampler after it, 2 x 2 means times 2: activations of 120000
        enc.down_blocks[2].resnets[0].conv_shortcut.weight.mul_(60)
        enc.down_blocks[2].downsamplers[0].conv.weight.mul_(2)
        # decoder: the first convolution (biases of +-1000) times 60, then the first upsampler's identity times 2
        dec.conv_in.weight.mul_(60)
        dec.conv_in.bias.mul_(60)
        dec.up_blocks[0].upsamplers[0].conv.weight.mul_(2)
    vae.register_to_config(force_upcast=force_upcast)
    vae.save_pretrained(sd_folder / "vae")


@pytest.fixture(scope="module", params=["tiny", "tiny-sdxl"])
def overflowing(request, tmp_path_factory):
    """{force_upcast: the diffusers folder of ``arch`` with the overflowing VAE}."""
    folders = {}
    for flag in (True, False):
        folder = tmp_path_factory.mktemp(f"{request.param}-upcast-{flag}") / "sd"
        shutil.copytree(cached_test_models(request.param) / "sd", folder)
        _overflowing_vae(folder, flag)
        folders[flag] = folder
    return request.param, folders


def _load(model, dtype, **kwargs):
    return StyleGallery.from_pretrained(str(model), device="cpu", torch_dtype=dtype, semantic_model=False,
                                        depth_model=False, **kwargs)


def _pictures():
    rng = np.random.default_rng(0)
    content = np.kron(rng.integers(0, 256, (4, 4, 3)), np.ones((16, 16, 1))).astype(np.uint8)
    return content, [255 - content]


def test_the_test_vae_overflows_float16_and_keeps_pictures_in_float32(overflowing):
    arch, folders = overflowing
    content, styles = _pictures()
    scaled = _load(folders[True], torch.float32).prepare(content, styles, size=SIZE)
    plain = _load(cached_test_models(arch) / "sd", torch.float32).prepare(content, styles, size=SIZE)
    torch.testing.assert_close(scaled.latents, plain.latents, rtol=1e-4, atol=1e-4)


def test_float16_with_force_upcast_encodes_and_decodes_in_float32(overflowing):
    arch, folders = overflowing
    content, styles = _pictures()
    full = _load(folders[True], torch.float32)
    half = _load(folders[True], torch.float16)
    assert half.dtype == torch.float16 and half.unet.dtype == torch.float16  # the rest stays in half precision
    assert half.vae.dtype == torch.float32
    expected = full.prepare(content, styles, size=SIZE)
    prepared = half.prepare(content, styles, size=SIZE)
    assert prepared.latents.isfinite().all()
    torch.testing.assert_close(prepared.latents, expected.latents, rtol=1e-3, atol=1e-3)
    picture, wanted = half.decode(expected.latents[:1]), full.decode(expected.latents[:1])
    assert (picture.int() - wanted.int()).abs().max() <= 1
    assert np.array_equal(np.asarray(half.preview(expected.latents[:1], "vae")), picture.permute(1, 2, 0).numpy())


def test_float16_without_force_upcast_stays_in_float16_and_overflows(overflowing):
    arch, folders = overflowing
    content, styles = _pictures()
    full = _load(folders[True], torch.float32)
    half = _load(folders[False], torch.float16)
    assert half.vae.dtype == torch.float16
    assert not half.prepare(content, styles, size=SIZE).latents.isfinite().all()
    latents = full.prepare(content, styles, size=SIZE).latents[:1]
    wanted = full.decode(latents)
    assert (half.decode(latents).int() - wanted.int()).abs().float().mean() > 50  # NaN pixels: not the picture


def test_bfloat16_keeps_the_vae_in_bfloat16(overflowing):
    """bfloat16 has float32's range: nothing overflows, so diffusers' rule does not upcast it."""
    arch, folders = overflowing
    content, styles = _pictures()
    half = _load(folders[True], torch.bfloat16)
    assert half.vae.dtype == torch.bfloat16
    assert half.prepare(content, styles, size=SIZE).latents.isfinite().all()


def test_a_single_file_follows_its_configs_flag(overflowing, tmp_path):
    arch, folders = overflowing
    content, styles = _pictures()
    expected = _load(folders[True], torch.float32).prepare(content, styles, size=SIZE)
    for flag, folder in folders.items():
        path = save_single_file(folder, tmp_path / f"upcast-{flag}.safetensors")
        half = _load(path, torch.float16, config=str(folder))
        assert half.vae.dtype == (torch.float32 if flag else torch.float16)
        latents = half.prepare(content, styles, size=SIZE).latents
        if flag:  # the weights were read in float16 first, as diffusers' pipelines read them
            torch.testing.assert_close(latents, expected.latents, rtol=1e-2, atol=1e-2)
        else:
            assert not latents.isfinite().all()


def test_an_inversion_is_not_read_back_in_another_precision(overflowing):
    """A float32 and a float16 pipeline sharing one inversion cache each invert the same images themselves."""
    arch, folders = overflowing
    content, styles = _pictures()
    full, half = _load(folders[True], torch.float32), _load(folders[True], torch.float16)
    half.inversion_cache = full.inversion_cache
    full.invert(full.prepare(content, styles, size=SIZE), inversion_steps=2, progress=False)
    misses = full.inversion_cache.misses
    inversion = half.invert(half.prepare(content, styles, size=SIZE), inversion_steps=2, progress=False)
    assert full.inversion_cache.misses == misses + 2  # both images inverted again, in float16
    assert inversion.features.isfinite().all()
