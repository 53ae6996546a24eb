"""The ``stylegallery`` command line: ``run`` a style transfer, ``make-test-model`` for offline models."""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import warnings
from pathlib import Path

from .errors import StyleGalleryError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stylegallery", description="Semantic-aware style transfer with Stable Diffusion.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="stylize CONTENT with one or more STYLE references")
    run.add_argument("content")
    run.add_argument("styles", nargs="+", metavar="STYLE")
    run.add_argument("-o", "--output", required=True, help="output image (PNG or JPEG)")
    run.add_argument("--model", default=None, help="diffusers folder or Hub id (default: SD 1.5; 'tiny' = test models)")
    run.add_argument("--semantic-model", default=None, help="DINOv2 folder or Hub id (default facebook/dinov2-base)")
    run.add_argument("--depth-model", default=None, help="Depth Anything folder or Hub id")
    run.add_argument("--no-semantic", action="store_true", help="match without DINOv2")
    run.add_argument("--no-depth", action="store_true", help="segment without depth refinement")
    run.add_argument("--size", type=int, default=512, help="working size, a multiple of 64 (512)")
    run.add_argument("--steps", type=int, default=None, help="optimization timesteps (150; fast: 28)")
    run.add_argument("--iters", type=int, default=None, help="Adam steps per timestep (1; fast: 3)")
    run.add_argument("--inversion-steps", type=int, default=15, help="DDIM inversion steps (15)")
    run.add_argument("--c-ratio", type=float, default=None, help="content loss weight (0.26; fast: 0.33 lcm, 0.38 hyper-sd)")
    run.add_argument("--lr", type=float, default=None, help="Adam learning rate (0.05; fast: 0.25 lcm, 0.15 hyper-sd)")
    run.add_argument("--fast", nargs="?", const="lcm", choices=("lcm", "hyper-sd"), default=None,
                     help="the authors' accelerated variant: a step-distilled LoRA fused for stylize with its "
                          "scheduler and settings (lcm: LCM-LoRA, the default; hyper-sd: Hyper-SD 4-step)")
    run.add_argument("--lora", metavar="ID|DIR|FILE", default=None,
                     help="LoRA for stylize (Hub id, folder or .safetensors file); with --fast it replaces the preset's")
    run.add_argument("--lora-weight-name", default=None, help="file name of the LoRA inside its Hub repo or folder")
    run.add_argument("--max-clusters", type=int, default=10, help="largest k tried when clustering (10)")
    run.add_argument("--region-attention", choices=("zeroed", "masked"), default="zeroed",
                     help="zeroed: the authors' region masking (default); masked: ours, attention only inside the region")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--device", default="auto")
    run.add_argument("--dtype", default="auto", help="auto, float32, float16 or bfloat16")
    run.add_argument("--low-memory", action="store_true",
                     help="gradient checkpointing, and on a GPU each model only on it while its stage runs (slower)")
    run.add_argument("--report", help="write a JSON report here")
    run.add_argument("--save-regions", metavar="DIR", help="write each image's region map as a PNG here")
    run.add_argument("--overwrite", action="store_true", help="replace existing output files")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    make = sub.add_parser("make-test-model", help="write tiny random-weight models to DIR/sd, DIR/dinov2, DIR/depth and a LoRA to DIR/lora")
    make.add_argument("folder")
    make.add_argument("--arch", choices=("tiny", "sd15"), default="tiny")
    return parser


def _peak_memory_mb(device) -> dict:
    import torch

    peak = {"cpu_max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if device.type == "cuda":
        peak["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return peak


def _outputs(args) -> list[Path]:
    paths = [Path(args.output)] + ([Path(args.report)] if args.report else [])
    if args.save_regions:
        names = ["content"] + [f"style{j + 1}" for j in range(len(args.styles))]
        paths += [Path(args.save_regions) / f"regions_{n}.png" for n in names]
    return paths


def _run(args) -> None:
    import torch

    from .pipeline import StyleGallery, check_settings
    from .results import region_png, write_atomic

    check_settings(size=args.size, inversion_steps=args.inversion_steps, max_clusters=args.max_clusters,
                   steps=args.steps, iters=args.iters, lr=args.lr, c_ratio=args.c_ratio, seed=args.seed)

    outputs = _outputs(args)
    existing = [str(p) for p in outputs if p.exists()]
    if existing and not args.overwrite:
        raise StyleGalleryError(f"{existing[0]} already exists; pass --overwrite to replace it")
    if Path(args.output).suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
        raise StyleGalleryError(f"output {args.output} must end in .png, .jpg, .jpeg or .webp")
    for name in [args.content] + args.styles:
        if not Path(name).is_file():
            raise StyleGalleryError(f"image file not found: {name}")
    pipe = StyleGallery.from_pretrained(
        args.model,
        semantic_model=False if args.no_semantic else args.semantic_model,
        depth_model=False if args.no_depth else args.depth_model,
        device=args.device,
        torch_dtype=args.dtype,
        lora=args.lora,
        lora_weight_name=args.lora_weight_name,
    )
    if args.low_memory and pipe.device.type != "cpu":
        pipe.enable_model_cpu_offload(pipe.device)
    if pipe.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(pipe.device)
    chosen = {k: v for k, v in dict(steps=args.steps, iters=args.iters, c_ratio=args.c_ratio, lr=args.lr).items()
              if v is not None}
    out = pipe(
        args.content, args.styles, preset=args.fast, size=args.size, inversion_steps=args.inversion_steps,
        max_clusters=args.max_clusters, seed=args.seed, region_attention=args.region_attention,
        use_depth=not args.no_depth, progress=not args.quiet, gradient_checkpointing=args.low_memory, **chosen,
    )
    write_atomic(args.output, lambda tmp: out.image.save(tmp, format=_image_format(args.output)))
    if args.save_regions:
        for path, labels in zip(outputs[-len(out.prepared.names):], out.segmentation.labels):
            write_atomic(path, lambda tmp, labels=labels: region_png(labels).save(tmp, format="PNG"))
    if args.report:
        scores = pipe.region_scores(out.prepared, out.segmentation, out.matching, out.stylization)
        report = {
            "content": out.prepared.names[0],
            "styles": out.prepared.names[1:],
            "model": pipe.backbone.name,
            "test_models": pipe.test_models,
            "device": str(pipe.device),
            "dtype": str(pipe.dtype).replace("torch.", ""),
            "settings": dict(
                {k: getattr(args, k) for k in ("size", "inversion_steps", "max_clusters", "region_attention", "seed")},
                fast=args.fast, **{k: out.stylization.settings[k] for k in ("steps", "iters", "lr", "c_ratio", "scheduler")}),
            "lora": out.stylization.settings["lora"],
            "regions": {name: out.segmentation.n_regions(i) for i, name in enumerate(["content"] + [f"style{j + 1}" for j in range(out.prepared.n_styles)])},
            "silhouette": out.segmentation.silhouette,
            "matches": out.matching.table(),
            "region_scores": scores.table(),
            "ssim": round(scores.ssim_whole, 6),
            "content_loss": round(scores.content_loss_whole, 6),
            "loss_history": [{k: h[k] for k in ("step", "timestep", "total", "content", "style")} for h in out.stylization.history],
            "timings": {k: round(v, 3) for k, v in out.timings.items()},
            "peak_memory": _peak_memory_mb(pipe.device),
            "feature_cache_mb": round(pipe.feature_cache.nbytes / 2**20, 2),
        }
        write_atomic(args.report, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2)))
    print(f"wrote {args.output}" + (" (tiny test models: mechanics only, not real stylization)" if pipe.test_models else ""))


def _image_format(path: str) -> str:
    return {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}[Path(path).suffix.lower()]


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``stylegallery`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # library chatter; our own notices below are shown
        warnings.filterwarnings("always", message=".*Falling back to the tiny")
        warnings.showwarning = lambda message, *a, **k: print(f"stylegallery: warning: {message}", file=sys.stderr)
        return _main(args)


def _main(args) -> int:
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for library in (diffusers_logging, transformers_logging):
        library.set_verbosity_error()
        library.disable_progress_bar()
    try:
        if args.command == "make-test-model":
            from .testing import make_test_models

            make_test_models(args.folder, args.arch)
            print(f"wrote test models ({args.arch}) to {args.folder}/sd, {args.folder}/dinov2, {args.folder}/depth, {args.folder}/lora")
        else:
            _run(args)
    except (StyleGalleryError, FileExistsError) as exc:
        print(f"stylegallery: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stylegallery: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
