"""The ``stylegallery`` command line: ``run`` a style transfer, ``batch`` a plan of them, ``studio`` (the explorer as a
web app, served by Voila), ``make-test-model`` for offline models."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from ..errors import StyleGalleryError

#: The environment variable through which ``stylegallery studio`` hands the app's kernel its model and settings (JSON).
STUDIO_ENVIRONMENT = "STYLEGALLERY_STUDIO"
UPLOAD_LIMIT = 64 * 2**20  # bytes of one message from the studio's page: all the pictures of one upload
#: The front-end extensions the studio's page loads: the widgets' only.
STUDIO_EXTENSIONS = ["@jupyter-widgets/jupyterlab-manager", "@voila-dashboards/widgets-manager7",
                     "@voila-dashboards/widgets-manager8", "anywidget"]
STUDIO_IDLE_KERNEL = 1800  # seconds: a studio kernel without a page connected to it and idle that long is shut down


def _parser() -> argparse.ArgumentParser:
    from ..testing import ARCHITECTURES

    parser = argparse.ArgumentParser(prog="stylegallery", description="Semantic-aware style transfer with Stable Diffusion.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="stylize CONTENT with one or more STYLE references")
    run.add_argument("content")
    run.add_argument("styles", nargs="+", metavar="STYLE")
    run.add_argument("-o", "--output", required=True, help="output image (PNG or JPEG)")
    _add_model_options(run)
    _add_settings(run)
    run.add_argument("--content-mask", metavar="FILE", help="regions of the content given by you: a label image (each "
                     "colour or value one region, black none, as LabelMe's label.png) or a binary mask, at the "
                     "image's size or the working size; they override the clusters there")
    run.add_argument("--style-mask", metavar="N=FILE", action="append", default=[],
                     help="the same for reference N (counted from 1); repeat for several")
    run.add_argument("--report", help="write a JSON report here")
    run.add_argument("--html", metavar="PAGE", help="write the whole run as one self-contained HTML page here (regions, "
                     "matches, losses, attention maps, scores, a before/after slider, every setting)")
    run.add_argument("--save-regions", metavar="DIR", help="write each image's region map as a PNG here")
    run.add_argument("--overwrite", action="store_true", help="replace existing output files")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    batch = sub.add_parser("batch", help="run a plan of content x reference jobs into OUTDIR, resumably, on one or "
                                         "more processes (accelerate)")
    batch.add_argument("plan", nargs="?", metavar="PLAN", help="CSV (columns content, styles separated by ';', then "
                                                                "settings) or JSONL plan; or --contents and --styles")
    batch.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="folder of the jobs' outputs, "
                                                                              "summary.csv and gallery.html")
    batch.add_argument("--contents", metavar="DIR", help="every image of DIR is a content image")
    batch.add_argument("--styles", metavar="DIR", help="every image of DIR is a reference")
    batch.add_argument("--pairs", choices=("all", "zip"), default="all",
                       help="all: every content with every group of references (default); zip: in order")
    batch.add_argument("--references-per-job", type=int, default=1, metavar="N", help="references per job (1)")
    batch.add_argument("--processes", type=int, default=1, metavar="N",
                       help="run N processes through accelerate launch (one model copy each; GPUs: one each)")
    batch.add_argument("--cache-dir", metavar="DIR", help="inversion cache shared by the processes (OUTDIR/cache)")
    batch.add_argument("--no-shared-cache", action="store_true",
                       help="every job inverts its own images (to measure what the shared cache saves)")
    batch.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_model_options(batch)
    _add_settings(batch)
    studio = sub.add_parser("studio", help="the step-through explorer as a web page for people who do not code "
                                           "(served by Voila; each browser tab loads its own copy of the models)")
    _add_model_options(studio)
    studio.add_argument("--size", type=int, default=512, help="the app's starting working size, a multiple of 64 (512)")
    studio.add_argument("--steps", type=int, default=None, help="the app's starting optimization timesteps (150)")
    studio.add_argument("--port", type=int, default=8866, help="port of the web server (8866)")
    studio.add_argument("--ip", default="localhost", help="address to listen on (localhost; 0.0.0.0: every network "
                        "interface, for other machines: anyone who reaches the port can use the app)")
    studio.add_argument("--no-browser", action="store_true", help="do not open the page in a browser")
    make = sub.add_parser("make-test-model", help="write tiny random-weight models to DIR/sd, DIR/dinov2, DIR/depth, "
                                                   "DIR/sam and a LoRA to DIR/lora")
    make.add_argument("folder")
    make.add_argument("--arch", choices=ARCHITECTURES, default="tiny",
                      help="tiny: SD 1.x for tests; sd15: the full SD 1.5 architecture; tiny-sd2, tiny-sdxl: the other families")
    make.add_argument("--single-file", action="store_true",
                      help="also write DIR/sd.safetensors: the same weights as one file in the original layout")
    return parser


def _add_model_options(parser) -> None:
    parser.add_argument("--model", default=None, help="diffusers folder, Hub id or single .safetensors/.ckpt file "
                        "(default: SD 1.5; 'tiny' = test models)")
    parser.add_argument("--model-config", metavar="DIR|ID", default=None,
                        help="for a single-file --model: the diffusers folder or Hub id of its base model, for its "
                        "configs and tokenizers (default: picked by diffusers from the file's weights)")
    parser.add_argument("--semantic-model", default=None, help="DINOv2 folder or Hub id (default facebook/dinov2-base)")
    parser.add_argument("--depth-model", default=None, help="Depth Anything folder or Hub id")
    parser.add_argument("--no-semantic", action="store_true", help="match without DINOv2")
    parser.add_argument("--no-depth", action="store_true", help="segment without depth refinement")
    parser.add_argument("--sam", nargs="?", const=True, default=None, metavar="MODEL",
                        help="the release's use_sam (off by default; its authors call it not very practical): SAM's "
                        "automatic masks are the base regions instead of the k-means clusters; MODEL: a SAM folder or "
                        "Hub id (default facebook/sam-vit-huge; with test models their tiny SAM); write --sam=MODEL "
                        "before the images")
    parser.add_argument("--lora", metavar="ID|DIR|FILE", default=None,
                        help="LoRA for stylize (Hub id, folder or .safetensors file); with --fast it replaces the preset's")
    parser.add_argument("--lora-weight-name", default=None, help="file name of the LoRA inside its Hub repo or folder")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", help="auto, float32, float16 or bfloat16")
    parser.add_argument("--low-memory", action="store_true",
                        help="gradient checkpointing, and on a GPU each model only on it while its stage runs (slower; "
                        "default: on for a CUDA GPU with under 16 GiB free)")


def _add_settings(parser) -> None:
    parser.add_argument("--size", type=int, default=512, help="working size, a multiple of 64 (512)")
    parser.add_argument("--steps", type=int, default=None, help="optimization timesteps (150; fast: 28)")
    parser.add_argument("--iters", type=int, default=None, help="Adam steps per timestep (1; fast: 3)")
    parser.add_argument("--inversion-steps", type=int, default=15, help="DDIM inversion steps (15)")
    parser.add_argument("--c-ratio", type=float, default=None, help="content loss weight (0.26; fast: 0.33 lcm, 0.38 hyper-sd)")
    parser.add_argument("--lr", type=float, default=None, help="Adam learning rate (0.05; fast: 0.25 lcm, 0.15 hyper-sd)")
    parser.add_argument("--fast", nargs="?", const="lcm", choices=("lcm", "hyper-sd"), default=None,
                        help="the authors' accelerated variant: a step-distilled LoRA fused for stylize with its "
                             "scheduler and settings (lcm: LCM-LoRA, the default; hyper-sd: Hyper-SD 4-step)")
    parser.add_argument("--max-clusters", type=int, default=10, help="largest k tried when clustering (10)")
    parser.add_argument("--region-attention", choices=("zeroed", "masked"), default="zeroed",
                        help="zeroed: the authors' region masking (default); masked: ours, attention only inside the region")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--region-strength", metavar="R=W[,R=W...]", default=None,
                        help="ours: style strength per content region (0 keeps the content, 1 the paper's, above 1 "
                             "stronger), e.g. 2=0.3; regions are numbered as in --save-regions' maps")
    parser.add_argument("--region-content-weight", metavar="R=W[,R=W...]", default=None,
                        help="ours: content-loss weight per content region (above 1 holds the content closer)")
    parser.add_argument("--keep-colours", action="store_true",
                        help="ours: keep the content's colours (the result's lightness with the content's chroma)")
    parser.add_argument("--output-size", type=int, default=None, metavar="N",
                        help="ours: the result's long side in pixels (aspect of the content kept), refined in windows "
                             "after the working-size run; at least --size")
    parser.add_argument("--window", type=int, default=None, metavar="N",
                        help="with --output-size: window side in pixels, a multiple of 64 (the model's native size)")
    parser.add_argument("--window-stride", type=int, default=None, metavar="N",
                        help="with --output-size: pixels between windows, a multiple of 8 (3/4 of the window)")
    parser.add_argument("--refine-steps", type=int, default=None, metavar="N",
                        help="with --output-size: last timesteps refined at the output size (30%% of --steps)")


def _mask_paths(args) -> dict[int, str]:
    """{image index: mask file} of --content-mask and --style-mask N=FILE."""
    paths = {0: args.content_mask} if args.content_mask else {}
    for item in args.style_mask:
        number, sep, path = item.partition("=")
        if not sep or not number.strip().isdigit() or not path:
            raise StyleGalleryError(f"--style-mask takes N=FILE, the reference's number from 1 (got {item!r})")
        if not 1 <= int(number) <= len(args.styles):
            raise StyleGalleryError(f"--style-mask {item}: there are {len(args.styles)} references, numbered from 1")
        paths[int(number)] = path
    return paths


def _model_kwargs(args, device: str | None = None) -> dict:
    """The model options as arguments of :meth:`StyleGallery.from_pretrained` (plain values: JSON for the studio)."""
    return dict(
        model=args.model,
        config=args.model_config,
        semantic_model=False if args.no_semantic else args.semantic_model,
        depth_model=False if args.no_depth else args.depth_model,
        sam_model=args.sam,
        device=device or args.device,
        torch_dtype=args.dtype,
        lora=args.lora,
        lora_weight_name=args.lora_weight_name,
        low_memory=True if args.low_memory else "auto",
    )


def _load_pipe(args, device: str | None = None):
    from ..pipeline import StyleGallery

    return StyleGallery.from_pretrained(**_model_kwargs(args, device))


def _outputs(args) -> list[Path]:
    paths = [Path(args.output)] + [Path(p) for p in (args.report, args.html) if p]
    if args.save_regions:
        names = ["content"] + [f"style{j + 1}" for j in range(len(args.styles))]
        paths += [Path(args.save_regions) / f"regions_{n}.png" for n in names]
    return paths


def _check(args) -> None:
    from ..settings import check_settings, region_weights
    from ..stages.windows import output_pixels

    for name in ("region_strength", "region_content_weight"):
        if isinstance(getattr(args, name), str):
            try:
                setattr(args, name, region_weights(getattr(args, name)))
            except StyleGalleryError as exc:
                raise StyleGalleryError(f"--{name.replace('_', '-')}: {exc}") from None
    check_settings(size=args.size, inversion_steps=args.inversion_steps, max_clusters=args.max_clusters,
                   steps=args.steps, iters=args.iters, lr=args.lr, c_ratio=args.c_ratio, seed=args.seed,
                   output_size=args.output_size, window=args.window, window_stride=args.window_stride,
                   refine_steps=args.refine_steps, region_strength=args.region_strength,
                   region_content_weight=args.region_content_weight)
    if args.sam == "":
        raise StyleGalleryError("--sam takes a SAM folder or Hub id, or nothing for the default")
    if args.output_size is not None:
        output_pixels(args.output_size, (args.size, args.size), (args.size, args.size))
    elif any(v is not None for v in (args.window, args.window_stride, args.refine_steps)):
        raise StyleGalleryError("--window, --window-stride and --refine-steps only apply with --output-size")


def _run(args) -> None:
    import torch

    from ..analysis.report import run_report
    from ..images import load_masks
    from ..results import region_png, write_atomic
    from .session_page import check_page_path, export_html

    _check(args)
    if args.html:
        check_page_path(args.html)
    outputs = _outputs(args)
    existing = [str(p) for p in outputs if p.exists()]
    if existing and not args.overwrite:
        raise StyleGalleryError(f"{existing[0]} already exists; pass --overwrite to replace it")
    if Path(args.output).suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
        raise StyleGalleryError(f"output {args.output} must end in .png, .jpg, .jpeg or .webp")
    for name in [args.content] + args.styles:
        if not Path(name).is_file():
            raise StyleGalleryError(f"image file not found: {name}")
    masks = load_masks(_mask_paths(args), [args.content] + args.styles, (args.size, args.size))
    pipe = _load_pipe(args)
    if pipe.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(pipe.device)
    settings = dict(_job_settings(args), **({"user_masks": masks} if masks else {}))
    out = pipe(args.content, args.styles, preset=settings.pop("fast", None), progress=not args.quiet, **settings)
    write_atomic(args.output, lambda tmp: out.image.save(tmp, format=_image_format(args.output)))
    if args.save_regions:
        for path, labels in zip(outputs[-len(out.prepared.names):], out.segmentation.labels):
            write_atomic(path, lambda tmp, labels=labels: region_png(labels).save(tmp, format="PNG"))
    if args.report:
        report = run_report(pipe, out, dict(
            {k: getattr(args, k) for k in ("size", "inversion_steps", "max_clusters", "region_attention", "seed")},
            fast=args.fast, **({"region_source": "sam"} if args.sam else {})))
        write_atomic(args.report, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2)))
    if args.html:
        export_html(args.html, out.prepared, out.segmentation, out.matching, out.stylization, pipe=pipe,
                    inversion=out.inversion, timings=out.timings, prepare_settings={"size": args.size},
                    overwrite=args.overwrite)
    print(f"wrote {args.output}" + (" (tiny test models: mechanics only, not real stylization)" if pipe.test_models else ""))


def _job_settings(args) -> dict:
    """The run settings the options give (stylize's own defaults, or the preset's, where an option is not given)."""
    chosen = dict(size=args.size, inversion_steps=args.inversion_steps, max_clusters=args.max_clusters, seed=args.seed,
                  region_attention=args.region_attention, use_depth=not args.no_depth,
                  gradient_checkpointing=args.low_memory, fast=args.fast)
    if args.sam:  # only then: the settings of a run without SAM (and a batch job's folder name) stay as they were
        chosen["region_source"] = "sam"
    chosen.update({k: v for k, v in dict(steps=args.steps, iters=args.iters, c_ratio=args.c_ratio, lr=args.lr,
                                         output_size=args.output_size, window=args.window,
                                         window_stride=args.window_stride, refine_steps=args.refine_steps,
                                         region_strength=args.region_strength,
                                         region_content_weight=args.region_content_weight,
                                         keep_colours=args.keep_colours or None).items()
                   if v is not None})
    return chosen


def _launch(args, argv: list[str]) -> int:
    """``--processes N``: run this batch command under ``accelerate launch`` with N processes; its status from the
    summary it wrote."""
    import socket
    import subprocess

    import torch

    from .batch import SUMMARY_NAME, failed_in_summary

    cpu = args.device == "cpu" or not torch.cuda.is_available()
    with socket.socket() as probe:  # a free port for the processes' rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    rest, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == "--processes":
            skip = True
        elif not item.startswith("--processes="):
            rest.append(item)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(args.processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
               str(port), "-m", "stylegallery", *rest]
    env = dict(os.environ, ACCELERATE_USE_CPU="true" if cpu else "false")
    summary = Path(args.output) / SUMMARY_NAME
    before = summary.stat().st_mtime_ns if summary.exists() else None
    code = subprocess.run(command, env=env).returncode
    if code != 0:
        raise StyleGalleryError(f"accelerate launch with {args.processes} processes failed (exit status {code})")
    if not summary.exists() or summary.stat().st_mtime_ns == before:
        raise StyleGalleryError("the processes ended without writing a summary")
    return _batch_status(failed_in_summary(summary))


def _batch_status(failed: int) -> int:
    """0 when every job is done; 100 + the number of failed jobs (at most 255) otherwise."""
    return 0 if not failed else 100 + min(failed, 155)


def _batch(args, argv: list[str]) -> int:
    from .batch import plan_from_folders, read_plan, run_batch

    if args.plan and (args.contents or args.styles):
        raise StyleGalleryError("give a PLAN file or --contents and --styles, not both")
    if args.plan:
        jobs = read_plan(args.plan)
    elif args.contents and args.styles:
        jobs = plan_from_folders(args.contents, args.styles, args.pairs, args.references_per_job)
    else:
        raise StyleGalleryError("give a PLAN file (CSV or JSONL), or --contents DIR and --styles DIR")
    _check(args)
    if not args.sam:
        asking = next((job for job in jobs if job.settings.get("region_source") == "sam"), None)
        if asking is not None:
            raise StyleGalleryError(f"row {asking.row} of the plan sets region_source=sam, which needs SAM: pass --sam "
                                    "(or --sam MODEL)")
    if args.processes < 1:
        raise StyleGalleryError(f"--processes must be at least 1 (got {args.processes})")
    if Path(args.output).exists() and not Path(args.output).is_dir():
        raise StyleGalleryError(f"{args.output} exists and is not a folder: give the output folder of the batch")
    under_accelerate = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if args.processes > 1 and not under_accelerate:
        return _launch(args, argv)

    def load(device: str):
        pipe = _load_pipe(args, device if args.device == "auto" else None)
        if pipe.device.type == "cpu" and under_accelerate:  # the cores shared between the processes
            pipe.cpu_threads = max(1, (os.cpu_count() or 1) // int(os.environ["WORLD_SIZE"]))
        return pipe

    model = dict(model=args.model, config=args.model_config, semantic=None if args.no_semantic else args.semantic_model,
                 depth=None if args.no_depth else args.depth_model, lora=args.lora,
                 lora_weight_name=args.lora_weight_name, dtype=args.dtype, **({"sam": args.sam} if args.sam else {}))
    run = run_batch(jobs, args.output, load_pipe=load, settings=_job_settings(args), model=model,
                    cache_dir=args.cache_dir, share_inversions=not args.no_shared_cache, device=args.device,
                    progress=not args.quiet)
    if run.summary is None:  # another process than the main one: the main process reports
        return 0
    counts = {s: run.status.count(s) for s in ("done", "skipped", "failed")}
    print(f"batch: {len(jobs)} jobs: {counts['done']} done, {counts['skipped']} already complete, "
          f"{counts['failed']} failed; {run.summary}, {run.gallery}")
    return 0 if under_accelerate else _batch_status(run.failed)


def _studio(args) -> int:
    """Serve the studio (the packaged notebook widgets/studio.ipynb) with Voila until interrupted; its kernels read
    the model options and starting settings from :data:`STUDIO_ENVIRONMENT`. Returns Voila's exit status."""
    import importlib.util
    import subprocess
    import tempfile

    from ..settings import check_settings

    missing = [name for name in ("voila", "ipywidgets", "anywidget", "ipykernel") if importlib.util.find_spec(name) is None]
    if missing:
        raise StyleGalleryError(f"the studio needs {', '.join(missing)} (not installed here): "
                                'pip install "stylegallery[studio]"')
    widgets = importlib.util.find_spec("stylegallery.widgets")  # found, not imported: the core never loads Jupyter
    notebook = Path(widgets.submodule_search_locations[0]) / "studio.ipynb" if widgets is not None else None
    if notebook is None or not notebook.is_file():
        raise StyleGalleryError("this installation of stylegallery lacks the studio's notebook "
                                "(stylegallery/widgets/studio.ipynb): reinstall it")
    check_settings(size=args.size, steps=args.steps)
    if args.sam == "":
        raise StyleGalleryError("--sam takes a SAM folder or Hub id, or nothing for the default")
    settings = dict(size=args.size, **({"steps": args.steps} if args.steps is not None else {}))
    with tempfile.TemporaryDirectory(prefix="stylegallery-studio-") as folder:
        # the app's kernels run this Python (where stylegallery is installed), whatever kernel "python3" means elsewhere
        spec = Path(folder) / "kernels" / "python3"
        spec.mkdir(parents=True)
        (spec / "kernel.json").write_text(json.dumps({
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (stylegallery studio)", "language": "python"}))
        # Voila reads voila.json in its working folder. Uploads travel over the kernel's websocket: room for large
        # photos (tornado's default is 10 MiB a message). The page loads only the widgets' front-end extensions:
        # others installed beside them (a notebook front end's, nbgrader's) fail in Voila's page with errors. A tab
        # closed without telling the server leaves its kernel, with its models, idle: it is shut down after a while
        (Path(folder) / "voila.json").write_text(json.dumps({
            "Voila": {"tornado_settings": {"websocket_max_message_size": UPLOAD_LIMIT}},
            "VoilaConfiguration": {"extension_allowlist": STUDIO_EXTENSIONS},
            "MappingKernelManager": {"cull_idle_timeout": STUDIO_IDLE_KERNEL, "cull_interval": 60}}))
        env = dict(os.environ, JUPYTER_PATH=os.pathsep.join(p for p in (folder, os.environ.get("JUPYTER_PATH")) if p))
        env[STUDIO_ENVIRONMENT] = json.dumps({"model": _model_kwargs(args), "settings": settings})
        command = [sys.executable, "-m", "voila", str(notebook), f"--port={args.port}", f"--Voila.ip={args.ip}",
                   "--strip_sources=True"] + (["--no-browser"] if args.no_browser else [])
        voila = subprocess.Popen(command, env=env, cwd=folder)
        try:
            return voila.wait()
        except KeyboardInterrupt:  # Voila has the interrupt too: it shuts its kernels down and ends
            return voila.wait()


def _image_format(path: str) -> str:
    return {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}[Path(path).suffix.lower()]


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``stylegallery`` console script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # library chatter; our own notices are lines of their own
        return _main(args, argv)


def _main(args, argv: list[str]) -> int:
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for library in (diffusers_logging, transformers_logging):
        library.set_verbosity_error()
        library.disable_progress_bar()
    try:
        if args.command == "make-test-model":
            from ..testing import make_test_models

            make_test_models(args.folder, args.arch, single_file=args.single_file)
            extra = f" and {args.folder}/sd.safetensors (use it with --model-config {args.folder}/sd)" if args.single_file else ""
            print(f"wrote test models ({args.arch}) to {args.folder}/sd, {args.folder}/dinov2, {args.folder}/depth, "
                  f"{args.folder}/lora, {args.folder}/sam{extra}")
        elif args.command == "batch":
            return _batch(args, argv)
        elif args.command == "studio":
            return _studio(args)
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
