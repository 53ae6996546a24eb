"""Hand-set weights that make the tiny random models behave like trained ones where the tests need it: a VAE that
keeps colours, a UNet whose features follow the image's regions, a depth model that reads brightness."""

from __future__ import annotations

import math

import torch

from ..analysis.preview import SD_LATENT_TO_RGB

RESIDUAL_SCALE = 0.02  # of every residual branch's last layer in the tiny UNet

_HUGE = 1000.0  # the constant channels that make GroupNorm's statistics independent of the image
_LINEAR = 30.0  # an offset that puts SiLU in its linear range (SiLU(x + 30) = x + 30 to 1e-11)


def colour_vae(vae) -> None:
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


def damp_residual_branches(model: torch.nn.Module, scale: float) -> None:
    """Shrink the last layer of every residual branch, as SD's own training code zero-initialises them.

    The skip paths then carry the input's colour and texture through the random network instead of the
    noise and border artefacts of a deep random stack.
    """
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith(("conv2", "proj_out", "to_out.0", "ff.net.2")):
                for param in module.parameters():
                    param.mul_(scale)


def pointwise_unet(unet: torch.nn.Module) -> None:
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


def brightness_depth(model) -> None:
    """Make the tiny Depth Anything read depth off each patch's brightness, through its own layers.

    A random depth network draws noise with the patch grid's period, which the depth step then splits regions
    along; a real depth map of a scene of flat areas is smooth within each area. Here the patch embedding
    takes the patch's mean luminance (plus 5, so the final ReLUs pass it), every transformer block and
    residual unit passes its input on, and each convolution of the neck and head carries that one channel
    (centre taps only: no zero-padding artefacts along the frame). As in :func:`colour_vae`, the signal shares
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
