"""Self-attention capture for the StyleGallery loss layers, as a diffusers attention processor.

The processor computes ordinary self-attention (scaled dot-product attention) and, for the layers a
:class:`AttentionRecorder` asks for, keeps the head-split query, key, value and attention output (before the
output projection). It can also end the UNet forward right after the last layer the loss reads, so no work is
spent on the rest of the network.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class StopForward(Exception):
    """Raised by the processor after the last recorded layer; caught by :meth:`AttentionRecorder.run`."""


class AttentionRecorder:
    """Which self-attention calls to record, what to keep of each, and what was recorded in the last pass."""

    def __init__(self, layers: list[int]):
        self.layers = sorted(layers)
        self.keep: tuple[str, ...] = ()
        self.stop_early = False
        self.records: dict[int, dict[str, torch.Tensor]] = {}

    def run(self, unet, latent, timestep, embedding, keep=("q", "k", "v", "o"), stop_early=True, added_cond_kwargs=None):
        """Run ``unet`` and return ``{layer: {name: tensor (batch, heads, tokens, dim)}}`` for the layers.

        With ``stop_early`` the forward ends after the last recorded layer and returns no noise prediction.
        ``added_cond_kwargs``: SDXL's pooled embedding and size ids (``Backbone.added_conditions``).
        """
        self.keep, self.stop_early, self.records = tuple(keep), stop_early, {}
        try:
            unet(latent, timestep, encoder_hidden_states=embedding, added_cond_kwargs=added_cond_kwargs, return_dict=False)
        except StopForward:
            pass
        finally:
            self.keep, self.stop_early = (), False
        records, self.records = self.records, {}
        return records


class RecordingAttnProcessor:
    """Self-attention processor that records q/k/v/o into an :class:`AttentionRecorder`."""

    def __init__(self, recorder: AttentionRecorder, layer: int):
        self.recorder = recorder
        self.layer = layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch = hidden_states.shape[0]
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (t.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        recorder = self.recorder
        recording = bool(recorder.keep) and self.layer in recorder.layers
        last = recording and recorder.stop_early and self.layer == recorder.layers[-1]
        # nothing reads the output of a last recorded layer that does not keep "o": skip its attention
        out = None if last and "o" not in recorder.keep else F.scaled_dot_product_attention(query, key, value)
        if recording:
            tensors = {"q": query, "k": key, "v": value, "o": out}
            recorder.records[self.layer] = {name: tensors[name] for name in recorder.keep}
            if last:
                raise StopForward

        hidden_states = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def _natural_key(name: str):
    return [int(part) if part.isdigit() else part for part in name.split(".")]


def self_attention_names(unet) -> list[str]:
    """Processor names of the UNet's self-attention layers in call order (encoder, middle, decoder)."""
    order = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}
    names = [n for n in unet.attn_processors if ".attn1." in n and n.split(".")[0] in order]
    return sorted(names, key=lambda n: (order[n.split(".")[0]], _natural_key(n)))


def default_loss_layers(unet) -> list[int]:
    """Indices (call order) of the decoder self-attention layers at the two highest resolutions that have
    attention: the first transformer layer of each attention module there.

    For SD 1.5 this is ``[10, ..., 15]`` of 16, the layers docs/method.md names; SD 2.x has the same structure. SDXL
    has attention only in its two lower-resolution decoder blocks and stacks 10 and 2 transformer layers in each
    attention module there (30 + 6 self-attention layers): taking the first of each keeps 6 layers, as many as
    SD 1.5, at the same places in each module.
    """
    names = self_attention_names(unet)
    decoder_blocks = sorted({int(n.split(".")[1]) for n in names if n.startswith("up_blocks.")})
    chosen = set(decoder_blocks[-2:])
    return [i for i, n in enumerate(names) if n.startswith("up_blocks.") and int(n.split(".")[1]) in chosen
            and ".transformer_blocks.0." in n]


def feature_block_index(unet) -> int:
    """Index of the first decoder block whose output reaches the latent's full resolution (SD 1.5: 2)."""
    with_upsampler = [i for i, block in enumerate(unet.up_blocks) if getattr(block, "upsamplers", None)]
    if not with_upsampler:
        raise ValueError("the UNet's decoder has no upsampling block; cannot choose a feature layer")
    return with_upsampler[-1]


def install_recorder(unet, layers: list[int] | None = None) -> AttentionRecorder:
    """Give every self-attention layer of ``unet`` a recording processor; return the recorder."""
    names = self_attention_names(unet)
    layers = default_loss_layers(unet) if layers is None else list(layers)
    bad = [i for i in layers if not 0 <= i < len(names)]
    if bad or not layers:
        raise ValueError(f"loss layers {layers} are not valid: this UNet has self-attention layers 0..{len(names) - 1}")
    recorder = AttentionRecorder(layers)
    processors = dict(unet.attn_processors)
    for index, name in enumerate(names):
        processors[name] = RecordingAttnProcessor(recorder, index)
    unet.set_attn_processor(processors)
    return recorder
