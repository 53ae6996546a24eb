"""Stage 4's optimization loop as a plain function, and StyleGallery's energy as a loss it can run.

:func:`optimize_latent` knows nothing of UNets or regions: at every timestep it asks ``loss_at(t)`` for the loss
function of that timestep (which may fetch the timestep's features once), takes ``iters`` Adam steps on the latent
under it, records the losses and reports each step to a callback whose True means stop. :func:`style_transfer_loss`
builds StyleGallery's ``loss_at`` (regional attention style loss + ``c_ratio`` x content loss, docs/method.md, stage 4); the
benchmark's reference of the authors' loop passes its own ``loss_at`` into the same loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from PIL import Image

from ..errors import StyleGalleryError
from ..progress import tqdm
from ..results import Stylization
from .style_loss import RegionPlan, content_loss, region_style_loss, style_targets

#: Share of the timesteps a warm re-run of a finished result runs by default (ours).
REFINE_FRACTION = 0.3


@dataclass
class StepInfo:
    """What :meth:`StyleGallery.stylize` reports to its callback after every optimization step."""

    step: int
    total_steps: int
    timestep: int
    loss: float
    content: float
    style: float
    style_per_region: dict[int, float]
    latent: torch.Tensor
    preview: Image.Image | None = None
    phase: str = "working size"  # or "output size": the refinement in windows (output_size)


@dataclass
class LossParts:
    """One evaluation of the energy: ``total`` (what is minimised, with its graph), and its parts for the record."""

    total: torch.Tensor
    content: torch.Tensor
    style: torch.Tensor
    style_per_region: torch.Tensor  # (content regions,)


@dataclass
class Optimized:
    """What :func:`optimize_latent` returns: the final latent, one record per step, whether it stopped early."""

    latent: torch.Tensor
    history: list[dict]
    stopped: bool


def normalized_start(z_t: torch.Tensor) -> torch.Tensor:
    """The starting latent: the content's inverted ``z_T``, normalised per pixel across channels (float32)."""
    z = z_t.to(torch.float32)
    return (z - z.mean(1, keepdim=True)) / (z.std(1, keepdim=True) + 1e-8)


def optimize_latent(
    z: torch.Tensor,
    timesteps: list[int],
    loss_at: Callable[[int], Callable[[torch.Tensor], LossParts]],
    *,
    lr: float,
    iters: int = 1,
    start: int = 0,
    callback: Callable[[StepInfo], bool | None] | None = None,
    preview: Callable[[torch.Tensor], Image.Image] | None = None,
    preview_every: int = 0,
    progress: bool = True,
    phase: str = "working size",
    optimizer: Callable[[torch.Tensor], object] | None = None,
) -> Optimized:
    """Minimise ``loss_at(t)(z)`` with Adam (``lr``), ``iters`` steps per timestep, over ``timesteps[start:]``.

    ``z`` is copied to float32. Steps are counted over the whole schedule (a run from ``start`` > 0 begins at step
    ``start * iters + 1``). ``callback(info)`` runs after every step; True stops after that step, as does a
    KeyboardInterrupt (Jupyter's interrupt button), keeping the current latent. ``preview(z)`` makes the picture
    put in ``info.preview`` every ``preview_every`` steps and at the last one (only when there is a callback).
    ``optimizer(z)`` makes the optimizer (default ``torch.optim.Adam([z], lr=lr)``; the windowed refinement's is
    :class:`~stylegallery.stages.windows.WindowedAdam`); a loss whose ``total`` carries no graph has already put
    its gradients where that optimizer reads them.
    ``phase`` names the run in the bar and in every :class:`StepInfo`.
    """
    z = z.detach().to(torch.float32).clone().requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=lr) if optimizer is None else optimizer(z)
    total = len(timesteps) * iters
    step = start * iters
    history: list[dict] = []
    stopped = False
    desc = "stylize" if phase == "working size" else f"stylize ({phase})"
    bar = tqdm(total=total, initial=step, desc=desc, disable=not progress, leave=False)
    try:
        for t in timesteps[start:]:
            loss = loss_at(t)
            for _ in range(iters):
                optimizer.zero_grad(set_to_none=True)
                parts = loss(z)
                if parts.total.requires_grad:
                    parts.total.backward()
                optimizer.step()
                step += 1
                bar.update(1)
                record = dict(step=step, timestep=t, total=parts.total.item(), content=float(parts.content.detach()),
                              style=parts.style.item(), style_per_region={
                                  str(r): v for r, v in enumerate(parts.style_per_region.detach().tolist())})
                history.append(record)
                if callback is not None and callback(_step_info(record, total, z, preview, preview_every, phase)):
                    stopped = True
                    break
            if stopped:
                break
    except KeyboardInterrupt:  # Jupyter's interrupt button acts as Stop: keep the current latent
        stopped = True
    finally:
        bar.close()
    return Optimized(z.detach(), history, stopped)


def _step_info(record: dict, total: int, z: torch.Tensor, preview, every: int, phase: str) -> StepInfo:
    step = record["step"]
    picture = preview(z.detach()) if preview is not None and every and (step % every == 0 or step == total) else None
    return StepInfo(step, total, record["timestep"], record["total"], record["content"], record["style"],
                    {int(k): v for k, v in record["style_per_region"].items()}, z.detach().clone(), picture, phase)


def style_transfer_loss(
    run_unet: Callable[[torch.Tensor, int], dict[int, dict[str, torch.Tensor]]],
    features_at: Callable[[int], tuple[dict, dict, dict]],
    plan_for: Callable[[int], RegionPlan],
    n_regions: int,
    *,
    c_ratio: float,
    query_scale: float,
    region_attention: str,
    style_weights: torch.Tensor | None = None,
    content_weights: torch.Tensor | None = None,
) -> Callable[[int], Callable[[torch.Tensor], LossParts]]:
    """StyleGallery's ``loss_at`` for :func:`optimize_latent` (docs/method.md, stage 4).

    ``run_unet(z, t)`` runs the UNet on the latent with gradients and returns the loss layers' queries ``"q"`` and
    attention outputs ``"o"``; ``features_at(t)`` the clean content's queries and the references' keys and values
    of those layers (no gradients, cached by the caller); ``plan_for(tokens)`` the :class:`RegionPlan` of a layer
    resolution. Per layer, the style target is the attention of the pass's own queries (detached, times
    ``query_scale``) over each matched style region's keys and values; the content loss compares the queries with
    the clean content's. ``total = style + c_ratio * content``.

    Ours, for per-region control: ``style_weights`` (n_regions,) multiplies each region's style loss (the reported
    per-region and total style losses are the weighted ones); ``content_weights`` (n_regions,) weighs each query
    token's content error by its region's weight (the mean over tokens stays the normalisation, so all ones is the
    paper's loss). None leaves the paper's loss untouched, bit for bit.
    """

    def loss_at(t: int) -> Callable[[torch.Tensor], LossParts]:
        q_content, style_k, style_v = features_at(t)
        layers = list(q_content)

        def loss(z: torch.Tensor) -> LossParts:
            records = run_unet(z, t)
            if content_weights is None:
                l_content = sum(content_loss(records[l]["q"][0], q_content[l]) for l in layers)
            else:
                l_content = sum(content_loss(records[l]["q"][0], q_content[l],
                                             content_weights[plan_for(q_content[l].shape[1]).content_region])
                                for l in layers)
            per_region = 0
            for l in layers:
                plan = plan_for(q_content[l].shape[1])
                with torch.no_grad():  # the target: this pass's own queries over the matched regions
                    target = style_targets(records[l]["q"][0].detach(), style_k[l], style_v[l], plan,
                                           region_attention, query_scale)
                per_region = per_region + region_style_loss(records[l]["o"][0], target, plan, n_regions,
                                                            region_attention)
            if style_weights is not None:
                per_region = per_region * style_weights
            l_style = per_region.sum()
            return LossParts(l_style + c_ratio * l_content, l_content, l_style, per_region)

        return loss

    return loss_at


def optimization_timesteps(kind: str, base, steps: int) -> list[int]:
    """The ``steps`` timesteps, noisy to clean, of scheduler ``kind`` (``ddim``, ``euler-trailing``, ``lcm``) built
    from the base scheduler's config."""
    from diffusers import DDIMScheduler, EulerDiscreteScheduler, LCMScheduler

    if kind == "ddim":
        scheduler = DDIMScheduler.from_config(base.config)
    elif kind == "euler-trailing":
        scheduler = EulerDiscreteScheduler.from_config(base.config, timestep_spacing="trailing")
    elif kind == "lcm":
        scheduler = LCMScheduler.from_config(base.config)
        limit = scheduler.config.original_inference_steps
        if steps > limit:
            raise StyleGalleryError(f"the lcm scheduler takes at most {limit} steps (got {steps})")
    else:
        raise StyleGalleryError(f"unknown scheduler {kind!r}")
    scheduler.set_timesteps(steps)
    return [int(round(float(t))) for t in scheduler.timesteps]


def start_index(init, start_step: int | None, grid: tuple[int, int], steps: int, iters: int, scheduler: str) -> int:
    """Index of the first timestep stylize runs: 0 for a cold run. A warm one (``init``, an earlier
    :class:`~stylegallery.Stylization` on the latent ``grid``) starts at ``start_step``, or by default where a
    stopped result stopped (same ``steps``, ``iters`` and ``scheduler``), else over the last
    :data:`REFINE_FRACTION` of the timesteps."""
    if init is None:
        if start_step:
            raise StyleGalleryError("start_step needs init: pass the earlier Stylization to continue from")
        return 0
    if not isinstance(init, Stylization):
        raise StyleGalleryError(f"init must be an earlier Stylization result (got {type(init).__name__})")
    if tuple(init.latent.shape[-2:]) != tuple(grid):
        raise StyleGalleryError("the earlier result was made at another size: it cannot be refined, start over")
    if start_step is None:
        same = all(init.settings.get(k) == v for k, v in (("steps", steps), ("iters", iters), ("scheduler", scheduler)))
        if init.stopped_early and same:
            return min(init.last_step // iters, steps - 1)
        return steps - max(1, round(steps * REFINE_FRACTION))
    if start_step >= steps:
        raise StyleGalleryError(f"start_step must be below steps ({steps}); got {start_step}")
    return start_step
