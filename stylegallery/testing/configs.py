"""The configs of the random-weight test models: SD 1.5's and SDXL's real UNet and VAE architectures, tiny ones of
each family, a tiny DINOv2, a tiny SAM and a printable-ASCII tokenizer vocabulary."""

from __future__ import annotations

SD15_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)


def vocabulary() -> tuple[dict[str, int], list[str]]:
    """A byte-level BPE vocabulary of printable ASCII (each character alone and with the word-end mark)."""
    chars = [chr(c) for c in range(33, 127)]
    tokens = ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars]
    return {tok: i for i, tok in enumerate(tokens)}, ["#version: 0.2"]


def unet_config(arch: str) -> dict:
    """The UNet config of a test architecture (``sd15``/``sdxl``: the published ones; the tiny ones: two levels)."""
    if arch == "sd15":
        return dict(
            sample_size=64,
            in_channels=4,
            out_channels=4,
            layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=768,
            attention_head_dim=8,
        )
    if arch == "sdxl":  # stabilityai/stable-diffusion-xl-base-1.0's UNet
        return dict(
            sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        )
    tiny = _tiny_unet_config()
    if arch == "tiny-sd2":  # SD 2.x: linear projections in the transformers, several head sizes
        return dict(tiny, use_linear_projection=True, attention_head_dim=(1, 2))
    if arch == "tiny-sdxl":  # SDXL: two stacked transformer layers per attention module, pooled text and size ids
        return dict(tiny, use_linear_projection=True, transformer_layers_per_block=(1, 2),
                    cross_attention_dim=TINY_TEXT + TINY_TEXT_2, addition_embed_type="text_time",
                    addition_time_embed_dim=8, projection_class_embeddings_input_dim=TINY_TEXT_2 + 6 * 8)
    return tiny


TINY_TEXT = 32  # hidden size of the tiny text encoder
TINY_TEXT_2 = 48  # tiny SDXL's second encoder: of another width, as in SDXL, by which single files tell them apart


def _tiny_unet_config() -> dict:
    # Two levels: self-attention in the encoder and in decoder blocks at two resolutions, so the layer roles of
    # docs/method.md (feature block, loss layers) exist just as in SD 1.5, with a receptive field small enough that
    # random features still follow the image's regions.
    return dict(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TINY_TEXT,
        attention_head_dim=1,  # one head: attention at full latent resolution stays cheap on a CPU
        norm_num_groups=8,
    )


def vae_config(arch: str) -> dict:
    """The VAE config of a test architecture: SD's (SDXL's scaling factor for ``sdxl``), or a tiny one."""
    full = arch in ("sd15", "sdxl")
    channels = (128, 256, 512, 512) if full else (16, 16, 32, 32)
    return dict(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=channels,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2 if full else 1,
        norm_num_groups=32 if full else 4,
        sample_size=(1024 if arch == "sdxl" else 512) if full else 64,
        scaling_factor=0.13025 if arch == "sdxl" else 0.18215,
    )


def dinov2_config(image_size: int = 224, **extra):
    """A tiny DINOv2 (hidden size 32, 2 layers, patch 14); ``extra`` for Depth Anything's backbone."""
    from transformers import Dinov2Config

    return Dinov2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        patch_size=14,
        image_size=image_size,
        **extra,
    )


#: The tiny SAM's input side: SAM ViT-H's is 1024; 64 px give a 4 x 4 grid of 16 px patches.
TINY_SAM_SIZE = 64


def sam_config(image_size: int = TINY_SAM_SIZE):
    """A tiny SAM (hidden size 32, 2 vision layers with one global attention, patch 16) for ``image_size`` px inputs."""
    from transformers import SamConfig, SamMaskDecoderConfig, SamPromptEncoderConfig, SamVisionConfig

    vision = SamVisionConfig(hidden_size=32, output_channels=32, num_hidden_layers=2, num_attention_heads=2,
                             image_size=image_size, patch_size=16, mlp_dim=64, window_size=4, global_attn_indexes=[1],
                             num_pos_feats=16)
    prompt = SamPromptEncoderConfig(hidden_size=32, image_size=image_size, patch_size=16, mask_input_channels=4)
    decoder = SamMaskDecoderConfig(hidden_size=32, mlp_dim=64, num_hidden_layers=2, num_attention_heads=2,
                                   iou_head_hidden_dim=32)
    return SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)
