"""Loading models through from_pretrained, and clear errors for missing ones."""

import pytest
import torch

from stylegallery import StyleGallery, StyleGalleryError
from stylegallery.stages.attention import default_loss_layers, feature_block_index, self_attention_names


def test_saved_tiny_models_load_through_from_pretrained(pipe, model_dir):
    assert (model_dir / "sd" / "model_index.json").is_file()
    assert pipe.semantic_model is not None and pipe.depth_model is not None
    assert pipe.device == torch.device("cpu") and pipe.dtype == torch.float32
    # the layer roles of docs/method.md exist in the tiny UNet as in SD 1.5
    names = self_attention_names(pipe.unet)
    assert all(names[i].startswith("up_blocks.") for i in default_loss_layers(pipe.unet))
    assert feature_block_index(pipe.unet) == 0
    assert pipe.backbone.embedding.shape[:2] == (1, 77)


def test_sd15_layer_roles_match_design():
    from diffusers import UNet2DConditionModel

    from stylegallery.testing.configs import unet_config

    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_config("sd15"))
    assert len(self_attention_names(unet)) == 16
    assert default_loss_layers(unet) == [10, 11, 12, 13, 14, 15]
    assert feature_block_index(unet) == 2


def test_missing_model_folder_gives_clear_error(tmp_path):
    with pytest.raises(StyleGalleryError, match="not found"):
        StyleGallery.from_pretrained(str(tmp_path / "nope"), semantic_model=False, depth_model=False, device="cpu")


def test_folder_without_a_model_gives_clear_error(tmp_path):
    with pytest.raises(StyleGalleryError, match="cannot load the diffusion model"):
        StyleGallery.from_pretrained(str(tmp_path), semantic_model=False, depth_model=False, device="cpu")


def test_unknown_hub_id_offline_gives_clear_error():
    with pytest.raises(StyleGalleryError, match="cannot load the semantic model"):
        from stylegallery.models.encoders import load_semantic

        load_semantic("no-such-org/no-such-model", torch.device("cpu"))


def test_impossible_device_is_refused():
    from stylegallery.models.devices import resolve_device

    with pytest.raises(StyleGalleryError):
        resolve_device("tpu")


def test_recorder_keeps_what_is_asked_and_stops_after_the_last_loss_layer(pipe):
    latent = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    embedding = pipe.backbone.embedding.expand(2, -1, -1)
    with torch.no_grad():
        full = pipe.recorder.run(pipe.unet, latent, 500, embedding, keep=("q", "k", "v", "o"), stop_early=False)
        early = pipe.recorder.run(pipe.unet, latent, 500, embedding, keep=("q", "k", "v"))  # skips the last attention
    assert sorted(full) == sorted(early) == pipe.default_loss_layers
    for layer in pipe.default_loss_layers:
        assert set(early[layer]) == {"q", "k", "v"}
        for name in ("q", "k", "v"):
            torch.testing.assert_close(early[layer][name], full[layer][name])
        q, k, v = (full[layer][n] for n in ("q", "k", "v"))
        torch.testing.assert_close(full[layer]["o"], torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, -1) @ v)


def test_the_test_model_cache_rebuilds_a_stale_copy_and_drops_old_versions(tmp_path, monkeypatch):
    from stylegallery.testing import TEST_MODEL_VERSION, cached_test_models

    monkeypatch.setenv("STYLEGALLERY_CACHE", str(tmp_path))
    root = tmp_path / "test-models"
    old = root / f"tiny-v{TEST_MODEL_VERSION - 1}"
    (old / "sd").mkdir(parents=True)
    other_arch = root / f"tiny-sdxl-v{TEST_MODEL_VERSION - 1}"
    other_arch.mkdir()
    stale = root / f"tiny-v{TEST_MODEL_VERSION}"
    (stale / "sd").mkdir(parents=True)
    (stale / "sd" / "stylegallery_test_model.json").write_text("{not json")  # a damaged copy: rebuilt, not trusted
    folder = cached_test_models("tiny")
    assert folder == stale and (folder / "sd" / "unet").is_dir() and (folder / "lora").is_dir()
    assert not old.exists() and other_arch.exists()  # only this architecture's old versions go
    assert sorted(p.name for p in root.iterdir()) == sorted([stale.name, other_arch.name])
    old.mkdir()  # an old copy left behind (e.g. by another install): a cache hit removes it too
    assert cached_test_models("tiny") == folder and not old.exists()
