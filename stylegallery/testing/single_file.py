"""A writer of the original single-file layout (CompVis for SD 1.x/2.x, SGM for SDXL), so that the single-file loading
path is tested on the test models. diffusers converts only the other way (original to diffusers)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

_RESNET_TO_ORIGINAL = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
                       ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection"))
_UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}


def original_unet_key(key: str, config: dict) -> str:
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


def original_vae_key(key: str, config: dict) -> str:
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
    out = {"model.diffusion_model." + original_unet_key(k, unet.config): v for k, v in unet.state_dict().items()}
    for key, value in vae.state_dict().items():
        if ".mid_block.attentions." in key and key.endswith("weight") and value.ndim == 2:
            value = value[:, :, None, None]  # the original's attention projections are 1 x 1 convolutions
        out["first_stage_model." + original_vae_key(key, vae.config)] = value
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
