"""The JSON report of one run: inputs, settings, regions, matches, per-region scores, losses, timings, memory."""

from __future__ import annotations

import resource

import torch

__all__ = ["peak_memory_mb", "run_report"]


def peak_memory_mb(device: torch.device) -> dict:
    """The process's peak resident memory and, on CUDA, the peak allocated since the last reset, in MiB."""
    peak = {"cpu_max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if device.type == "cuda":
        peak["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return peak


#: Stylize settings a report takes from the run (they may come from a preset or a default): the loop's, and those of
#: a refinement at ``output_size`` (None without one), and the region controls.
RESOLVED = ("steps", "iters", "lr", "c_ratio", "scheduler", "output_size", "window", "window_stride", "refine_steps",
            "region_strength", "region_content_weight", "keep_colours")


def run_report(pipe, out, settings: dict) -> dict:
    """The report of ``out`` (a ``StyleGalleryOutput`` of ``pipe``); ``settings``: the run's own settings (size,
    seed, ...), to which the stylize settings the run resolved (:data:`RESOLVED`) are added; ``output``: the
    refinement at the output size (its size, windows, first refined step), or None; ``user_masks``: a hash of each
    mask the user gave, by image index, or None."""
    scores = pipe.region_scores(out.prepared, out.segmentation, out.matching, out.stylization)
    names = ["content"] + [f"style{j + 1}" for j in range(out.prepared.n_styles)]
    return {
        "content": out.prepared.names[0],
        "styles": out.prepared.names[1:],
        "model": pipe.backbone.name,
        "test_models": pipe.test_models,
        "device": str(pipe.device),
        "dtype": str(pipe.dtype).replace("torch.", ""),
        "settings": dict(settings, **{k: out.stylization.settings[k] for k in RESOLVED if k in out.stylization.settings}),
        "output": out.stylization.settings.get("output"),
        "lora": out.stylization.settings["lora"],
        "user_masks": out.segmentation.settings.get("user_masks"),
        "regions": {name: out.segmentation.n_regions(i) for i, name in enumerate(names)},
        "silhouette": out.segmentation.silhouette,
        "matches": out.matching.table(),
        "region_scores": scores.table(),
        "ssim": round(scores.ssim_whole, 6),
        "content_loss": round(scores.content_loss_whole, 6),
        "loss_history": [{k: h[k] for k in ("step", "timestep", "total", "content", "style")} for h in out.stylization.history],
        "timings": {k: round(v, 3) for k, v in out.timings.items()},
        "peak_memory": peak_memory_mb(pipe.device),
        "feature_cache_mb": round(pipe.feature_cache.nbytes / 2**20, 2),
    }
