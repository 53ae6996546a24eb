"""Tiny random-weight stand-ins for every model StyleGallery uses, built offline.

The models are written with ``save_pretrained`` so that the normal loading code (``from_pretrained``) reads
them exactly as it reads the real Stable Diffusion 1.5, DINOv2 and Depth Anything checkpoints.  A random network
still separates regions of different colour and texture, which is what the tests rely on.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
from pathlib import Path

import torch

from .models import TEST_MODEL_NAMES
from .preview import SD_LATENT_TO_RGB

#: Bump when the layout or configs below change, so cached copies are rebuilt rather than trusted.
TEST_MODEL_VERSION = 11
ARCHITECTURES = TEST_MODEL_NAMES
RESIDUAL_SCALE = 0.02
PARTS = ("sd", "dinov2", "depth", "lora")

_SD15_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)


def _vocabulary() -> tuple[dict[str, int], list[str]]:
    """A byte-level BPE vocabulary of printable ASCII (each character alone and with the word-end mark)."""
    chars = [chr(c) for c in range(33, 127)]
    tokens = ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars]
    return {tok: i for i, tok in enumerate(tokens)}, ["#version: 0.2"]


def _unet_config(arch: str) -> dict:
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
    # DESIGN.md (feature block, loss layers) exist just as in SD 1.5, with a receptive field small enough that
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


def _vae_config(arch: str) -> dict:
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


_HUGE = 1000.0  # the constant channels that make GroupNorm's statistics independent of the image
_LINEAR = 30.0  # an offset that puts SiLU in its linear range (SiLU(x + 30) = x + 30 to 1e-11)


def _colour_vae(vae) -> None:
    """Make the tiny AutoencoderKL a fixed colour-preserving pair, as SD's VAE nearly is.

    Encoder: 8 x 8 average pooling of the pixels, then the least-squares inverse of :data:`SD_LATENT_TO_RGB`
    (divided by the scaling factor); decoder: that map back to RGB, upsampled by repetition. Every residual
    branch and attention output is zero, so each block passes its input on. GroupNorm would normalise each
    image by its own statistics; every colour channel therefore shares its group with its negative and with
    two constant channels of +-1000, which fixes the group's mean at 0 and its variance (to 1e-5) whatever the
    image, and the norm's scale undoes the division. A random VAE instead maps some colours close together,
    so that regions of different colour merge in segmentation.
    """
    to_rgb = torch.tensor(SD_LATENT_TO_RGB)
    to_latent = torch.linalg.pinv(to_rgb)  # (3, 4): rgb @ to_latent @ to_rgb = rgb
    sf = vae.config.scaling_factor
    enc, dec = vae.encoder, vae.decoder

    def identity(conv, channels, tap=(1, 1)):
        conv.weight.zero_()
        conv.bias.zero_()
        for c in range(channels):
            conv.weight[c, c, tap[0], tap[1]] = 1.0

    with torch.no_grad():
        for name, module in vae.named_modules():
            if name.endswith(("conv2", "to_out.0")):
                module.weight.zero_()
                module.bias.zero_()
        # encoder: 16 channels = 4 latent channels (unscaled) and one constant 1
        enc.conv_in.weight.zero_()
        enc.conv_in.bias.zero_()
        enc.conv_in.weight[:4, :, 1, 1] = to_latent.T / sf
        enc.conv_in.bias[4] = 1.0
        for block in enc.down_blocks:
            for down in block.downsamplers or []:
                conv = down.conv
                conv.weight.zero_()
                conv.bias.zero_()
                for c in range(conv.in_channels):
                    conv.weight[c, c, :2, :2] = 0.25  # stride 2: the mean of each 2 x 2 block
        shortcut = enc.down_blocks[2].resnets[0].conv_shortcut  # 16 -> 32: groups of 8 [c, -c, H, -H, 0...]
        shortcut.weight.zero_()
        shortcut.bias.zero_()
        for k in range(4):
            shortcut.weight[8 * k, k] = 1.0
            shortcut.weight[8 * k + 1, k] = -1.0
            shortcut.weight[8 * k + 2, 4] = _HUGE
            shortcut.weight[8 * k + 3, 4] = -_HUGE
        _undo_group_norm(enc.conv_norm_out, [8 * k for k in range(4)], group=8)
        enc.conv_out.weight.zero_()
        enc.conv_out.bias.fill_(-_LINEAR)  # log-variance channels: -30, a near-zero spread
        for k in range(4):
            enc.conv_out.weight[k, 8 * k, 1, 1] = 1.0
        identity(vae.quant_conv, 8, tap=(0, 0))
        identity(vae.post_quant_conv, 4, tap=(0, 0))
        # decoder: 32 channels = per RGB channel a group of 4 [x, -x, H, -H]
        dec.conv_in.weight.zero_()
        dec.conv_in.bias.zero_()
        for i in range(3):
            dec.conv_in.weight[4 * i, :, 1, 1] = to_rgb[:, i] * sf
            dec.conv_in.weight[4 * i + 1, :, 1, 1] = -to_rgb[:, i] * sf
            dec.conv_in.bias[4 * i + 2], dec.conv_in.bias[4 * i + 3] = _HUGE, -_HUGE
        for block in dec.up_blocks:
            for up in block.upsamplers or []:
                identity(up.conv, up.conv.in_channels)
            for resnet in block.resnets:
                if resnet.conv_shortcut is not None:
                    identity(resnet.conv_shortcut, resnet.conv_shortcut.out_channels, tap=(0, 0))
        _undo_group_norm(dec.conv_norm_out, [4 * i for i in range(3)], group=4)
        dec.conv_out.weight.zero_()
        dec.conv_out.bias.fill_(-_LINEAR)
        for i in range(3):
            dec.conv_out.weight[i, 4 * i, 1, 1] = 1.0


def _undo_group_norm(norm, signal_channels, group):
    """Scale a GroupNorm so that each signal channel (in a group [x, -x, H, -H, 0, ...]) comes out as x + 30;
    every other channel comes out 0."""
    norm.weight.zero_()
    norm.bias.zero_()
    for c in signal_channels:
        norm.weight[c] = _HUGE * math.sqrt(2.0 / group)  # the group's standard deviation is H * sqrt(2 / group)
        norm.bias[c] = _LINEAR


def _damp_residual_branches(model: torch.nn.Module, scale: float) -> None:
    """Shrink the last layer of every residual branch, as SD's own training code zero-initialises them.

    The skip paths then carry the input's colour and texture through the random network instead of the
    noise and border artefacts of a deep random stack.
    """
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith(("conv2", "proj_out", "to_out.0", "ff.net.2")):
                for param in module.parameters():
                    param.mul_(scale)


def _pointwise_unet(unet: torch.nn.Module) -> None:
    """Keep the tiny UNet's main path local: its 3 x 3 convolutions (input, resampling, residual branches)
    keep only their centre tap (times 3, to keep their gain), and each downsampler averages its 2 x 2 block.

    Random 3 x 3 kernels mix neighbours with random signs and see the zero padding along the frame as a
    feature of its own, so random features blur region boundaries by several latent pixels and add frame
    strips that a trained SD UNet does not have; the clusters then follow those artefacts instead of regions.
    """
    with torch.no_grad():
        for name, module in unet.named_modules():
            if not isinstance(module, torch.nn.Conv2d) or module.kernel_size != (3, 3):
                continue
            centre = module.weight[:, :, 1, 1].clone() * 3
            module.weight.zero_()
            if "downsamplers" in name:  # stride 2, padding 1: taps 1 and 2 are the block's own pixels
                module.weight[:, :, 1:3, 1:3] = centre[:, :, None, None] / 4
            else:
                module.weight[:, :, 1, 1] = centre


def _build_sd(folder: Path, arch: str) -> None:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    unet = UNet2DConditionModel(**_unet_config(arch))
    if arch.startswith("tiny"):
        _damp_residual_branches(unet, RESIDUAL_SCALE)
        _pointwise_unet(unet)
    unet.save_pretrained(folder / "unet")

    vae = AutoencoderKL(**_vae_config(arch))
    if arch.startswith("tiny"):
        _colour_vae(vae)
    vae.save_pretrained(folder / "vae")

    sdxl = arch in ("tiny-sdxl", "sdxl")
    # SDXL's two encoders: CLIP ViT-L (768) and OpenCLIP bigG (1280) side by side; the tiny model's 32 and 48.
    # The full architectures' text encoders have 2 layers here: only the empty prompt is encoded, once.
    widths = {"tiny-sdxl": (TINY_TEXT, TINY_TEXT_2), "sdxl": (768, 1280)}.get(arch, (_unet_config(arch)["cross_attention_dim"],))
    vocab, merges = _vocabulary()
    configs = [CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2 if sdxl else 1,  # SDXL reads the penultimate layer
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        projection_dim=hidden,
    ) for hidden in widths]
    CLIPTextModel(configs[0]).save_pretrained(folder / "text_encoder")
    if sdxl:
        CLIPTextModelWithProjection(configs[1]).save_pretrained(folder / "text_encoder_2")

    for tokenizer_name in ("tokenizer", "tokenizer_2") if sdxl else ("tokenizer",):
        tok_dir = folder / tokenizer_name
        tok_dir.mkdir(parents=True)
        (tok_dir / "vocab.json").write_text(json.dumps(vocab))
        (tok_dir / "merges.txt").write_text("\n".join(merges) + "\n")
        tokenizer = CLIPTokenizer(
            str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=77, pad_token="<|endoftext|>"
        )
        tokenizer.save_pretrained(tok_dir)

    # SD 2.1 (768-v) predicts v
    scheduler = dict(_SD15_SCHEDULER, prediction_type="v_prediction" if arch == "tiny-sd2" else "epsilon")
    DDIMScheduler(**scheduler).save_pretrained(folder / "scheduler")
    index = {
        "_class_name": "StableDiffusionXLPipeline" if sdxl else "StableDiffusionPipeline",
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    if sdxl:
        index.update(text_encoder_2=["transformers", "CLIPTextModelWithProjection"],
                     tokenizer_2=["transformers", "CLIPTokenizer"], force_zeros_for_empty_prompt=True)
    else:
        index.update(safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))


def _dinov2_config(image_size: int = 224, **extra):
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


def _build_dinov2(folder: Path) -> None:
    from transformers import BitImageProcessor, Dinov2Model

    Dinov2Model(_dinov2_config()).save_pretrained(folder)
    BitImageProcessor(
        size={"shortest_edge": 256},
        crop_size={"height": 224, "width": 224},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
        resample=3,
    ).save_pretrained(folder)


def _brightness_depth(model) -> None:
    """Make the tiny Depth Anything read depth off each patch's brightness, through its own layers.

    A random depth network draws noise with the patch grid's period, which the depth step then splits regions
    along; a real depth map of a scene of flat areas is smooth within each area. Here the patch embedding
    takes the patch's mean luminance (plus 5, so the final ReLUs pass it), every transformer block and
    residual unit passes its input on, and each convolution of the neck and head carries that one channel
    (centre taps only: no zero-padding artefacts along the frame). As in :func:`_colour_vae`, the signal shares
    the backbone's LayerNorm with its negative and with constant +-1000 channels, so the norm does not depend
    on the image.
    """
    backbone = model.backbone
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
        patch = backbone.embeddings.patch_embeddings.projection
        taps = patch.kernel_size[0] * patch.kernel_size[1]
        luminance = torch.tensor([0.299, 0.587, 0.114])[:, None, None] / taps
        patch.weight[0], patch.weight[1] = luminance, -luminance
        patch.bias[0], patch.bias[1], patch.bias[2], patch.bias[3] = 5.0, -5.0, _HUGE, -_HUGE
        backbone.embeddings.cls_token[0, 0, 2], backbone.embeddings.cls_token[0, 0, 3] = _HUGE, -_HUGE
        hidden = backbone.config.hidden_size
        backbone.layernorm.weight[0] = _HUGE * math.sqrt(2.0 / hidden)  # undo the norm, as in _undo_group_norm
        neck = model.neck
        for layer in neck.reassemble_stage.layers:
            layer.projection.weight[0, 0] = 1.0
            if isinstance(layer.resize, torch.nn.ConvTranspose2d):
                layer.resize.weight[0, 0] = 1.0  # each of the factor x factor outputs copies its input
            elif isinstance(layer.resize, torch.nn.Conv2d):
                layer.resize.weight[0, 0, layer.resize.kernel_size[0] // 2, layer.resize.kernel_size[1] // 2] = 1.0
        for conv in list(neck.convs) + [model.head.conv1, model.head.conv2, model.head.conv3]:
            conv.weight[0, 0, conv.kernel_size[0] // 2, conv.kernel_size[1] // 2] = 1.0
        for fusion in neck.fusion_stage.layers:
            fusion.projection.weight[0, 0] = 1.0


def _build_depth(folder: Path) -> None:
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, DPTImageProcessor

    backbone = _dinov2_config(image_size=518, out_indices=[1, 2], reshape_hidden_states=False)
    config = DepthAnythingConfig(
        backbone_config=backbone,
        reassemble_hidden_size=32,
        reassemble_factors=[2, 1],
        neck_hidden_sizes=[16, 32],
        fusion_hidden_size=16,
        head_hidden_size=8,
    )
    model = DepthAnythingForDepthEstimation(config)
    _brightness_depth(model)
    model.save_pretrained(folder)
    DPTImageProcessor(
        size={"height": 518, "width": 518},
        keep_aspect_ratio=True,
        ensure_multiple_of=14,
        do_pad=False,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
        resample=3,
    ).save_pretrained(folder)


LORA_RANK = 4
LORA_STD = 0.05  # of the update B @ A relative to nothing in particular: enough to change every loss layer


def _build_lora(folder: Path, unet_folder: Path) -> None:
    """A random LoRA for the UNet in ``unet_folder``, in the Kohya format (``lora_unet_*`` names with
    ``lora_down``/``lora_up``/``alpha``) of the LCM-LoRA and Hyper-SD files on the Hub, as ``folder/
    pytorch_lora_weights.safetensors``. It adapts the linear and 1x1 layers of every transformer block."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    unet = UNet2DConditionModel.from_pretrained(unet_folder)
    tensors = {}
    for name, module in unet.named_modules():
        if ".attentions." not in name:
            continue
        if isinstance(module, torch.nn.Linear):
            out_features, in_features = module.out_features, module.in_features
            shape = ()
        elif isinstance(module, torch.nn.Conv2d) and module.kernel_size == (1, 1):
            out_features, in_features = module.out_channels, module.in_channels
            shape = (1, 1)
        else:
            continue
        key = "lora_unet_" + name.replace(".", "_")
        tensors[f"{key}.lora_down.weight"] = torch.randn(LORA_RANK, in_features, *shape) / math.sqrt(in_features)
        tensors[f"{key}.lora_up.weight"] = torch.randn(out_features, LORA_RANK, *shape) * LORA_STD
        tensors[f"{key}.alpha"] = torch.tensor(float(LORA_RANK))
    folder.mkdir(parents=True)
    save_file(tensors, folder / "pytorch_lora_weights.safetensors")


_RESNET_TO_ORIGINAL = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
                       ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection"))
_UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}


def _original_unet_key(key: str, config: dict) -> str:
    """The original (CompVis/SGM) name of a diffusers UNet weight: blocks are numbered through, ``layers_per_block
    + 1`` slots per resolution, the resnet at slot 0, the attention at 1, and up-/down-samplers in a slot of their own
    (down) or after the attention (up)."""
    stride = config["layers_per_block"] + 1
    parts = key.split(".")
    module, leaf = key.rsplit(".", 1)
    if module in _UNET_TOP:
        return f"{_UNET_TOP[module]}.{leaf}"
    if parts[0] == "mid_block":  # resnet, attention, resnet
        kind, leaf = parts[1], ".".join(parts[3:])
        slot = 1 if kind == "attentions" else 2 * int(parts[2])
        return f"middle_block.{slot}.{_renamed(leaf, kind)}"
    part, block, kind, index, leaf = parts[0], int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
    if part == "down_blocks":
        if kind == "downsamplers":
            return f"input_blocks.{(block + 1) * stride}.0.op.{leaf.removeprefix('conv.')}"
        return f"input_blocks.{block * stride + index + 1}.{1 if kind == 'attentions' else 0}.{_renamed(leaf, kind)}"
    if kind == "upsamplers":
        has_attention = "CrossAttn" in config["up_block_types"][block]
        return f"output_blocks.{block * stride + stride - 1}.{2 if has_attention else 1}.{leaf}"
    return f"output_blocks.{block * stride + index}.{1 if kind == 'attentions' else 0}.{_renamed(leaf, kind)}"


def _renamed(leaf: str, kind: str) -> str:
    if kind == "resnets":
        for new, old in _RESNET_TO_ORIGINAL:
            leaf = leaf.replace(new, old)
    return leaf


def _original_vae_key(key: str, config: dict) -> str:
    """The original name of a diffusers VAE weight (the decoder's up blocks are numbered from the lowest resolution
    in diffusers and from the highest in the original)."""
    key = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
    parts = key.split(".")
    if parts[1] in ("down_blocks", "up_blocks"):
        block = int(parts[2])
        if parts[1] == "up_blocks":
            block = len(config["up_block_types"]) - 1 - block
        name = "down" if parts[1] == "down_blocks" else "up"
        if parts[3] in ("downsamplers", "upsamplers"):
            return f"{parts[0]}.{name}.{block}.{name}sample.{'.'.join(parts[5:])}"
        return f"{parts[0]}.{name}.{block}.block.{'.'.join(parts[4:])}"
    if parts[1] == "mid_block":
        if parts[2] == "resnets":
            return f"{parts[0]}.mid.block_{int(parts[3]) + 1}.{'.'.join(parts[4:])}"
        leaf = ".".join(parts[4:])
        for new, old in (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")):
            leaf = leaf.replace(new, old)
        return f"{parts[0]}.mid.attn_1.{leaf}"
    return key


def _open_clip(encoder, prefix: str) -> dict:
    """A transformers CLIP text encoder's weights under OpenCLIP's names (query, key and value stacked)."""
    state = {k.removeprefix("text_model."): v for k, v in encoder.state_dict().items()}
    out = {prefix + "positional_embedding": state.pop("embeddings.position_embedding.weight"),
           prefix + "token_embedding.weight": state.pop("embeddings.token_embedding.weight")}
    if "text_projection.weight" in state:
        out[prefix + "text_projection"] = state.pop("text_projection.weight").T.contiguous()
    for key in [k for k in state if ".q_proj." in k]:
        stacked = [state.pop(key.replace(".q_proj.", f".{n}_proj.")) for n in "qkv"]
        kind = key.rsplit(".", 1)[1]
        out[prefix + key.split(".q_proj.")[0].replace("encoder.layers.", "transformer.resblocks.").replace(
            "self_attn", "attn") + f".in_proj_{kind}"] = torch.cat(stacked)
    for key, value in state.items():
        for new, old in (("encoder.layers.", "transformer.resblocks."), ("layer_norm1", "ln_1"),
                         ("layer_norm2", "ln_2"), ("fc1", "c_fc"), ("fc2", "c_proj"), ("self_attn", "attn"),
                         ("final_layer_norm", "ln_final")):
            key = key.replace(new, old)
        out[prefix + key] = value
    return out


def save_single_file(sd_folder: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Write the Stable Diffusion pipeline in diffusers folder ``sd_folder`` as one ``.safetensors`` file in the
    original layout (CompVis for SD 1.x/2.x, SGM for SDXL) that diffusers' ``from_single_file`` reads, so the
    single-file loading path is tested on the test models. diffusers converts only the other way (its library has
    no diffusers-to-original writer), hence this one; the names follow the layout diffusers reads.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    sd_folder, path = Path(sd_folder), Path(path)
    unet = UNet2DConditionModel.from_pretrained(sd_folder, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(sd_folder, subfolder="vae")
    sdxl = unet.config.addition_embed_type == "text_time"
    out = {"model.diffusion_model." + _original_unet_key(k, unet.config): v for k, v in unet.state_dict().items()}
    for key, value in vae.state_dict().items():
        if ".mid_block.attentions." in key and key.endswith("weight") and value.ndim == 2:
            value = value[:, :, None, None]  # the original's attention projections are 1 x 1 convolutions
        out["first_stage_model." + _original_vae_key(key, vae.config)] = value
    text = CLIPTextModel.from_pretrained(sd_folder, subfolder="text_encoder")
    if sdxl:
        clip_l = {"text_model." + k.removeprefix("text_model."): v for k, v in text.state_dict().items()}
        out.update({"conditioner.embedders.0.transformer." + k: v for k, v in clip_l.items()})
        text_2 = CLIPTextModelWithProjection.from_pretrained(sd_folder, subfolder="text_encoder_2")
        out.update(_open_clip(text_2, "conditioner.embedders.1.model."))
    elif unet.config.use_linear_projection:  # SD 2.x: OpenCLIP
        out.update(_open_clip(text, "cond_stage_model.model."))
    else:
        out.update({"cond_stage_model.transformer.text_model." + k.removeprefix("text_model."): v
                    for k, v in text.state_dict().items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in out.items()}, str(path))
    return path


def _new_folder(parent: Path, prefix: str) -> Path:
    """A new, uniquely named folder with the permissions of any folder the user makes (not mkdtemp's 0700)."""
    while True:
        folder = parent / f"{prefix}{secrets.token_hex(6)}"
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue


def make_test_models(folder: str | os.PathLike, arch: str = "tiny", seed: int = 0, single_file: bool = False) -> Path:
    """Build random-weight models into ``folder/sd``, ``folder/dinov2``, ``folder/depth`` and a LoRA for the
    UNet into ``folder/lora``.

    ``arch="tiny"`` gives models of a few hundred kilobytes for tests; ``"tiny-sd2"`` (v-prediction, linear
    projections) and ``"tiny-sdxl"`` (two text encoders, pooled embedding and size ids, stacked transformer
    layers) the same for the other families. ``"sd15"`` and ``"sdxl"`` give the real UNet and VAE architectures
    (random weights; about 3.5 GB and 10.5 GB; their text encoders have the real widths but 1 or 2 layers, since only
    the empty prompt is encoded) for benchmarks. ``single_file``: also write ``folder/sd.safetensors``, the same
    weights in the original single-file layout (:func:`save_single_file`). Existing folders are not touched:
    the models are written to a temporary folder beside ``folder`` and moved into place.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown test-model architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    folder = Path(folder)
    parts = PARTS + (("sd.safetensors",) if single_file else ())
    for part in parts:
        if (folder / part).exists():
            raise FileExistsError(f"{folder / part} already exists; choose an empty folder for the test models")
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    staging = _new_folder(folder, ".building-")
    try:
        _build_sd(staging / "sd", arch)
        _build_dinov2(staging / "dinov2")
        _build_depth(staging / "depth")
        _build_lora(staging / "lora", staging / "sd" / "unet")
        (staging / "sd" / "stylegallery_test_model.json").write_text(
            json.dumps({"arch": arch, "version": TEST_MODEL_VERSION, "seed": seed})
        )
        if single_file:
            save_single_file(staging / "sd", staging / "sd.safetensors")
        for part in parts:
            os.replace(staging / part, folder / part)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def cached_test_models(arch: str = "tiny") -> Path:
    """Folder with the test models of ``arch``, built once into the user cache and reused afterwards.

    The cache folder is ``$STYLEGALLERY_CACHE`` (default ``~/.cache/stylegallery``)``/test-models``. A copy
    built by another version of this module, or left incomplete, is rebuilt, and the copies of older versions
    (``sd15`` and ``sdxl`` take gigabytes) are removed.
    """
    root = Path(os.environ.get("STYLEGALLERY_CACHE", Path.home() / ".cache" / "stylegallery")) / "test-models"
    target = root / f"{arch}-v{TEST_MODEL_VERSION}"
    marker = target / "sd" / "stylegallery_test_model.json"
    try:
        if json.loads(marker.read_text()).get("version") == TEST_MODEL_VERSION and (target / "lora").is_dir():
            _drop_old_versions(root, arch, target)
            return target
    except (OSError, ValueError):
        pass
    root.mkdir(parents=True, exist_ok=True)
    staging = _new_folder(root, f".{arch}-")
    try:
        make_test_models(staging / "m", arch)
        shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(staging / "m", target)
        except OSError:  # another process finished the same build first
            if not marker.is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _drop_old_versions(root, arch, target)
    return target


def _drop_old_versions(root: Path, arch: str, current: Path) -> None:
    for old in root.glob(f"{arch}-v*"):
        if old != current and old.name.removeprefix(f"{arch}-v").isdigit():
            shutil.rmtree(old, ignore_errors=True)
