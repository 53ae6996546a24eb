"""An independent reference of the stylize stage, written from docs/method.md's formulas (stage 4).

It shares no code with ``stylegallery.stages.style_loss`` or ``stylegallery.stages.attention``: its own attention
processor on its own copy of the UNet, full attention with explicit region masks (the authors' zeroed
tensors; logit masks for ``"masked"``), the *current* latent's queries as the target's queries, and its own
Adam loop. A target built from the clean content's queries instead moves the latent by about 3% in 3 steps.
"""

import math

import torch
import torch.nn.functional as F

STEPS, LR, C_RATIO, SCALE = 3, 0.05, 0.26, 1.5


class Capture:
    """Self-attention processor: ordinary attention that keeps q, k, v and the output (heads split)."""

    def __init__(self, store, name):
        self.store, self.name = store, name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        residual = hidden_states
        b, c, h, w = hidden_states.shape if hidden_states.ndim == 4 else (None,) * 4
        if hidden_states.ndim == 4:
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        source = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        heads = attn.heads
        split = lambda x: x.view(x.shape[0], -1, heads, x.shape[-1] // heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(attn.to_q(hidden_states)), split(attn.to_k(source)), split(attn.to_v(source))
        out = F.scaled_dot_product_attention(q, k, v)
        if encoder_hidden_states is None:
            self.store[self.name] = {"q": q, "k": k, "v": v, "o": out}
        hidden_states = attn.to_out[1](attn.to_out[0](out.transpose(1, 2).reshape(q.shape[0], -1, heads * q.shape[-1])))
        if b is not None:
            hidden_states = hidden_states.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def reference_unet(model_dir):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(model_dir / "sd"), subfolder="unet").eval().requires_grad_(False)
    store = {}
    unet.set_attn_processor({name: Capture(store, name) for name in unet.attn_processors})
    return unet, store


def loss_layers(store):
    """Decoder self-attention layers at the two highest resolutions (largest token counts)."""
    decoder = {n: r for n, r in store.items() if n.startswith("up_blocks") and ".attn1." in n}
    sizes = sorted({r["q"].shape[2] for r in decoder.values()}, reverse=True)[:2]
    return [n for n, r in decoder.items() if r["q"].shape[2] in sizes]


def region_mask(labels, region, tokens):
    """(tokens, 1) float mask of ``region`` on a square grid of ``tokens`` tokens (nearest, as the release)."""
    side = int(math.isqrt(tokens))
    small = F.interpolate((labels == region).float()[None, None], size=(side, side), mode="nearest")
    return small.reshape(tokens, 1)


def reference_run(unet, store, embedding, scheduler, content_latent, style_latents, z_t, labels, matches, mode):
    """docs/method.md stage 4, step by step: returns [(style loss in the regions, content loss)] and the latent."""
    scheduler.set_timesteps(STEPS)
    z = ((z_t - z_t.mean(1, keepdim=True)) / (z_t.std(1, keepdim=True) + 1e-8)).requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=LR)
    losses = []
    for t in scheduler.timesteps:
        with torch.no_grad():
            unet(content_latent, t, encoder_hidden_states=embedding)
            q_content = {n: r["q"] for n, r in store.items()}
            style = []
            for latent in style_latents:
                unet(latent, t, encoder_hidden_states=embedding)
                style.append({n: (r["k"], r["v"]) for n, r in store.items()})
        unet(z, t, encoder_hidden_states=embedding)
        layers = loss_layers(store)
        content = sum((store[n]["q"] - q_content[n]).abs().mean() for n in layers)
        full, reported = 0.0, 0.0
        for n in layers:
            q, o = store[n]["q"], store[n]["o"]
            tokens = q.shape[2]
            for r, match in enumerate(matches):
                if match is None:
                    continue
                j, s = match
                k, v = style[j][n]
                mc, ms = region_mask(labels[0], r, tokens), region_mask(labels[1 + j], s, tokens)
                if mode == "zeroed":  # the authors' way: region-masked q, k, v and output, one attention
                    target = F.scaled_dot_product_attention(q.detach() * mc * SCALE, k * ms, v * ms)
                    full = full + (o * mc - target).abs().mean()  # what the release minimises
                    reported = reported + ((o - target).abs() * mc).sum() / o.numel()  # without rows outside r
                else:  # logits outside the matched region removed; over the whole reference if it has no key here
                    allowed = ms[:, 0].bool() if ms.any() else torch.ones(ms.shape[0], dtype=torch.bool)
                    target = F.scaled_dot_product_attention(q.detach() * SCALE, k, v, attn_mask=allowed[None, :])
                    rows = mc[:, 0].bool()
                    if rows.any():
                        term = (o - target).abs().mean(dim=(0, 1, 3))[rows].mean()
                        full, reported = full + term, reported + term
        loss = full + C_RATIO * content
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append((float(reported.detach()), float(content.detach())))
    return losses, z.detach()
