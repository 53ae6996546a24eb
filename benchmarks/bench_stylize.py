"""Fast stylization: StyleGallery's ``stylize`` against the authors' optimization loop and the UNet floor.

Three ways to spend one optimization step, on the same model, latent size and label maps:

* **reference** - what the authors' release does every step: a no-grad full UNet pass on the clean content
  latent, one separate no-grad full UNet pass per style latent, a full UNet forward and backward on the
  optimized latent, and the regional style loss as one attention per matched content region over
  region-masked tensors (the optimized latent's own queries, and keys, values zeroed outside the masks:
  docs/method.md's "zeroed" way), plus the content loss. Implemented below (:func:`reference_stylize`) on the
  pipeline's UNet and attention recorder; that it computes the paper's loss is checked independently of both by
  ``tests/test_loss_reference.py``.
* **ours** - ``StyleGallery.stylize`` with its defaults (``region_attention="zeroed"``): a *first* run with the
  feature cache cleared, then a *re-run* after changing only the matches (cache warm).
* **floor** - one full UNet forward and backward on the latent: no loss method can do a step for less.

Each variant runs in a fresh subprocess (so its peak memory is its own), a few steps each, for 1, 2 and 4
references and 2, 5 and 8 matched regions. The style loss alone (targets + loss + backward, no UNet) is also
timed in-process for every setting: ours (one attention per matched region over only the keys it may see), the
authors' per-region loss, and one masked attention per layer over all keys (:func:`dense_masked_targets`).

Run from the repository root (see benchmarks/README.md for how to read the output)::

    python benchmarks/bench_stylize.py                      # sd15 random-weight architecture, CPU, 256 px
    python benchmarks/bench_stylize.py --quick              # fewer settings and steps
    python benchmarks/bench_stylize.py --model tiny --quick # smoke run (seconds per step)
    python benchmarks/bench_stylize.py --model /path/to/stable-diffusion-v1-5 --device cuda --size 512
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    CONTENT, STYLES, PeakMemory, code_state, fmt_bytes, load_average, load_pipe, machine, median, now, replace_section,
    run_worker,
)

SCRIPT = Path(__file__).resolve()
SCHEDULE = 150  # the paper's number of timesteps; the benchmark runs the first few of them


# ============================================================================================ the reference
def _attention(q, k, v, mask=None):
    """SDPA on (heads, tokens, dim) tensors, given a batch dimension: on the CPU, 3-D inputs take the math
    path, which materialises the whole (heads, N, M) attention matrix; 4-D inputs take the flash kernel."""
    return F.scaled_dot_product_attention(q[None], k[None], v[None], attn_mask=None if mask is None else mask[None, None])[0]


def region_masks(labels: torch.Tensor, tokens: int, device, dtype) -> torch.Tensor:
    """(n_regions, tokens) 0/1 masks of a label map (h, w) at the resolution of a layer with ``tokens`` tokens."""
    h, w = labels.shape
    factor = round(math.sqrt(h * w / tokens))
    masks = F.one_hot(labels.long(), int(labels.max()) + 1).permute(2, 0, 1).float()[None]
    if factor > 1:
        masks = F.interpolate(masks, size=(h // factor, w // factor), mode="nearest")
    return masks[0].flatten(1).to(device, dtype)


def reference_style_loss(out, queries, style_records, layer, content_masks, style_masks, matches, query_scale):
    """Per content region: L1 between the output and one attention over region-masked q, k, v (zeroed way);
    ``queries`` are those of the pass that gave ``out`` (the optimized latent's, as in the release)."""
    losses = []
    for r, match in enumerate(matches):
        if match is None:
            losses.append(out.new_zeros((), dtype=torch.float32))
            continue
        j, s = match
        m_r = content_masks[r][None, :, None]
        m_s = style_masks[j][s][None, :, None]
        with torch.no_grad():
            q = queries.detach() * m_r * query_scale
            k = style_records[j][layer]["k"][0] * m_s
            v = style_records[j][layer]["v"][0] * m_s
            target = _attention(q, k, v).float() * m_r.float()
        losses.append((out.float() * m_r.float() - target).abs().mean())
    return torch.stack(losses)


def reference_stylize(pipe, prepared, inversion, segmentation, matching, *, steps: int, schedule: int = SCHEDULE,
                      lr: float = 0.05, c_ratio: float = 0.26, query_scale: float = 1.5, on_step=None):
    """The authors' loop, step by step (see module docstring): its own loss, run by StyleGallery's optimization loop
    (:func:`stylegallery.stages.stylize.optimize_latent`: the same starting latent, Adam and records). Returns the
    history of losses per step and the final latent.

    ``on_step(step)`` runs after every step; returning True stops.
    """
    from stylegallery.stages.stylize import LossParts, normalized_start, optimize_latent

    unet, recorder, embedding = pipe.unet, pipe.recorder, pipe.backbone.embedding
    device, dtype = pipe.device, pipe.dtype
    layers = sorted(pipe.default_loss_layers)
    pipe.scheduler.set_timesteps(schedule)
    timesteps = [int(t) for t in pipe.scheduler.timesteps][:steps]
    content = prepared.latents[:1].to(device, dtype)
    styles = [prepared.latents[j + 1 : j + 2].to(device, dtype) for j in range(prepared.n_styles)]
    labels = segmentation.labels
    masks: dict[int, tuple] = {}

    def loss_at(t):
        with torch.no_grad():  # every step, full passes on the clean latents: nothing is cached
            content_rec = recorder.run(unet, content, t, embedding, keep=("q",), stop_early=False)
            style_rec = [recorder.run(unet, s, t, embedding, keep=("k", "v"), stop_early=False) for s in styles]

        def loss(z):
            rec = recorder.run(unet, z.to(dtype), t, embedding, keep=("q", "o"), stop_early=False)
            l_content = sum((rec[l]["q"][0].float() - content_rec[l]["q"][0].float()).abs().mean() for l in layers)
            per_region = 0
            for layer in layers:
                tokens = content_rec[layer]["q"].shape[2]
                if tokens not in masks:
                    masks[tokens] = (region_masks(labels[0], tokens, device, dtype),
                                     [region_masks(labels[j + 1], tokens, device, dtype) for j in range(len(styles))])
                per_region = per_region + reference_style_loss(
                    rec[layer]["o"][0], rec[layer]["q"][0], style_rec, layer, *masks[tokens], matching.matches,
                    query_scale)
            l_style = per_region.sum()
            return LossParts(l_style + c_ratio * l_content, l_content, l_style, per_region)

        return loss

    callback = None if on_step is None else (lambda info: on_step(info.step))
    run = optimize_latent(normalized_start(inversion.final_latents[:1].to(device)), timesteps, loss_at, lr=lr,
                          callback=callback, progress=False)
    return run.history, run.latent


# ============================================================================================ one masked attention
def dense_masked_targets(queries, keys, values, plan, query_scale: float = 1.5):
    """The masked targets as one attention per layer over all references' keys with an (N, M) region mask.

    The design issue 4 names; ``style_loss.style_targets`` instead runs one attention per matched region over
    only the keys it may see. Same numbers (checked in :func:`loss_bench`), kept here to compare the costs.
    """
    same_ref = plan.key_reference[None, :] == plan.query_reference[:, None]
    inside = same_ref & (plan.key_region[None, :] == plan.query_region[:, None])
    empty = ~inside.any(1)[:, None]  # the matched region has no key at this resolution: its whole reference
    mask = inside | (empty & same_ref) | (plan.query_reference < 0)[:, None]  # unmatched rows: anywhere, unused
    return _attention(queries * query_scale, keys, values, mask)


# ============================================================================================ stages on disk
def _slice(prepared, inversion, segmentation, n_refs):
    from stylegallery import Inversion, Prepared, Segmentation

    keep = n_refs + 1
    p = Prepared(prepared.names[:keep], prepared.hashes[:keep], prepared.pixels[:keep], prepared.latents[:keep], prepared.model)
    i = Inversion(inversion.trajectories[:keep], inversion.features[:keep], inversion.timesteps, inversion.weights,
                  inversion.settings)
    s = Segmentation(segmentation.labels[:keep], segmentation.silhouette[:keep], segmentation.chosen_k[:keep],
                     segmentation.settings)
    return p, i, s


def build_stages(pipe, folder: Path, size: int, configs, inversion_steps: int, log=print) -> dict:
    """Prepare, invert, segment (forced k) and match once; save the stages of every (refs, regions) setting."""
    max_refs = max(r for r, _ in configs)
    start = time.perf_counter()
    prepared = pipe.prepare(str(CONTENT), [str(s) for s in STYLES[:max_refs]], size=size)
    inversion = pipe.invert(prepared, inversion_steps=inversion_steps, progress=False)
    log(f"  prepared and inverted {max_refs + 1} images at {size} px in {time.perf_counter() - start:.0f} s")
    segs = {}
    for k in sorted({k for _, k in configs}):
        segs[k] = pipe.segment(prepared, inversion, n_clusters=k, use_depth=False, min_region_size=1, progress=False)
    out = {}
    for n_refs, k in configs:
        p, i, s = _slice(prepared, inversion, segs[k], n_refs)
        m = pipe.match(p, i, s)
        where = folder / f"refs{n_refs}_regions{k}"
        for result in (p, i, s, m):
            result.save(where / f"{result.stage}.safetensors")
        out[(n_refs, k)] = {"dir": str(where), "content_regions": s.n_regions(0),
                            "style_regions": [s.n_regions(j + 1) for j in range(n_refs)],
                            "references_used": len({tuple(x)[0] for x in m.matches if x is not None})}
    return out


def load_stages(folder):
    from stylegallery import Inversion, Matching, Prepared, Segmentation

    folder = Path(folder)
    return tuple(cls.load(folder / f"{cls.stage}.safetensors") for cls in (Prepared, Inversion, Segmentation, Matching))


# ============================================================================================ workers
def _z0(inversion, device):
    z_t = inversion.final_latents[:1].to(device, torch.float32)
    return (z_t - z_t.mean(1, keepdim=True)) / z_t.std(1, keepdim=True)


def floor_steps(pipe, inversion, steps: int) -> dict:
    """``steps`` full UNet forward + backward passes on the starting latent, timed one by one."""
    device = pipe.device
    pipe.scheduler.set_timesteps(SCHEDULE)
    timesteps = [int(t) for t in pipe.scheduler.timesteps][:steps]
    z = _z0(inversion, device).requires_grad_(True)
    times, cpu, captured = [], [], {}

    def keep_output(_module, _inputs, output):
        captured["out"] = output[0] if isinstance(output, tuple) else output.sample

    # through the recorder (recording nothing, no early stop), so the pass uses the same attention kernels as
    # stylize's gradient pass
    handle = pipe.unet.register_forward_hook(keep_output)
    try:
        for t in timesteps:
            start, start_cpu = now(device), time.process_time()
            pipe.recorder.run(pipe.unet, z.to(pipe.dtype), t, pipe.backbone.embedding, keep=(), stop_early=False)
            captured.pop("out").float().abs().mean().backward()
            z.grad = None
            times.append(now(device) - start)
            cpu.append(time.process_time() - start_cpu)
    finally:
        handle.remove()
    return {"times": times, "cpu": cpu}


def worker(args) -> dict:
    """One variant in this (fresh) process; prints one JSON line."""
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = load_pipe(args.model, args.device, args.dtype)
    device = pipe.device
    prepared, inversion, segmentation, matching = load_stages(args.dir)
    steps = args.steps
    result = {"variant": args.worker}
    # page in the weights (loaded lazily from the safetensors files) so that they do not count as working memory
    with torch.no_grad():
        small = torch.zeros(1, 4, 8, 8, device=device, dtype=pipe.dtype)
        pipe.unet(small, 999, encoder_hidden_states=pipe.backbone.embedding, return_dict=False)
        pipe.decode(small)

    if args.worker == "floor":
        mem = PeakMemory(device).start()
        result.update(floor_steps(pipe, inversion, steps), memory=mem.read())

    elif args.worker == "reference":
        mem = PeakMemory(device).start()
        times, cpu, state = [], [], {"last": now(device), "cpu": time.process_time()}

        def on_step(step):
            times.append(now(device) - state["last"])
            cpu.append(time.process_time() - state["cpu"])
            if step >= steps:
                state["memory"] = mem.read()
            state["last"], state["cpu"] = now(device), time.process_time()

        history, _ = reference_stylize(pipe, prepared, inversion, segmentation, matching, steps=steps, on_step=on_step)
        result.update(times=times, cpu=cpu, memory=state["memory"], first_loss=history[0]["total"])

    elif args.worker in ("ours", "rerun"):
        from stylegallery import TensorCache

        # the features also go to disk, so that a fresh process can re-run from them ("rerun")
        disk = Path(args.dir) / "feature-cache"
        if args.worker == "ours":
            shutil.rmtree(disk, ignore_errors=True)
        pipe.feature_cache = TensorCache(directory=disk)

        def timed_run(matching):
            """Times and peak memory of the first steps; ``without_cache``: the largest per-step peak less the
            bytes the feature cache held at the end of that step (what it held during that step's passes)."""
            mem = PeakMemory(device).start()
            baseline = mem.baseline
            times, cpu, peaks, state = [], [], [], {"last": now(device), "cpu": time.process_time()}

            def callback(info):
                times.append(now(device) - state["last"])
                cpu.append(time.process_time() - state["cpu"])
                peaks.append((mem.read()["peak"], pipe.feature_cache.nbytes))
                if info.step >= steps:
                    return True
                mem.start()
                state["last"], state["cpu"] = now(device), time.process_time()
                return False

            out = pipe.stylize(prepared, inversion, segmentation, matching, steps=SCHEDULE, callback=callback,
                               progress=False)
            peak = max(p for p, _ in peaks)
            memory = {"peak": peak, "baseline": baseline, "extra": max(peak - baseline, 0),
                      "without_cache": max(p - c for p, c in peaks), "kind": mem.read()["kind"]}
            return {"times": times, "cpu": cpu, "memory": memory, "first_loss": out.history[0]["total"]}

        # the re-run changes only the matches: content region 0 takes another region of the last reference
        last = prepared.n_styles - 1
        current = matching.matches[0][1] if matching.matches[0] is not None and matching.matches[0][0] == last else -1
        if args.worker == "ours":
            result["first"] = timed_run(matching)
            result["cache_bytes"] = pipe.feature_cache.nbytes
            result["cache_misses"] = pipe.feature_cache.misses
        matching.override(0, last, (current + 1) % segmentation.n_regions(last + 1))
        hits = pipe.feature_cache.hits
        result["rerun"] = timed_run(matching)
        result["rerun_cache_hits"] = pipe.feature_cache.hits - hits
        result["rerun_cache_bytes"] = pipe.feature_cache.nbytes
        if args.worker == "ours":
            result["floor"] = floor_steps(pipe, inversion, steps)  # same process, right after the re-run
    print(json.dumps(result))
    return result


# ============================================================================================ equivalence
def check_reference(pipe, folder: Path, log=print) -> dict:
    """The reference loop must equal ``stylize(region_attention="zeroed")`` with full-precision features.

    Runs both for 2 steps at 64 px with 2 references and 2 regions; returns the largest relative difference of
    the per-step losses and of the final latents.
    """
    stages = build_stages(pipe, folder, 64, [(2, 2)], inversion_steps=2, log=lambda *_: None)
    prepared, inversion, segmentation, matching = load_stages(stages[(2, 2)]["dir"])
    history, z_ref = reference_stylize(pipe, prepared, inversion, segmentation, matching, steps=2)
    pipe.feature_cache.clear()
    ours = pipe.stylize(prepared, inversion, segmentation, matching, steps=SCHEDULE, region_attention="zeroed",
                        feature_precision=torch.float32, callback=lambda info: info.step >= 2, progress=False)
    loss_diff = max(abs(a["total"] - b["total"]) / abs(b["total"]) for a, b in zip(history, ours.history))
    region_diff = max(abs(x - y) / max(abs(y), 1e-12) for a, b in zip(history, ours.history)
                      for x, y in zip(a["style_per_region"].values(), b["style_per_region"].values()))
    z_diff = float((z_ref.cpu() - ours.latent).abs().max() / ours.latent.abs().max())
    ok = max(loss_diff, region_diff, z_diff) < 1e-3
    log(f"  reference == stylize(zeroed): loss rel. diff {loss_diff:.1e}, per-region {region_diff:.1e}, "
        f"latent {z_diff:.1e} -> {'OK' if ok else 'MISMATCH'}")
    out = {"loss_rel_diff": loss_diff, "region_rel_diff": region_diff, "latent_rel_diff": z_diff, "ok": ok}

    # a re-run walks the timesteps in the same order as the first run: a plain LRU cache smaller than one run's
    # features would evict every entry just before it is needed again; ours keeps the share that fits
    cache, steps = pipe.feature_cache, 6
    limit = cache.max_bytes
    hits = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "a TensorCache is full": expected at 75%
        try:
            for share in (1.0, 0.75):
                cache.clear()
                cache.max_bytes = 1 << 40
                pipe.stylize(prepared, inversion, segmentation, matching, steps=SCHEDULE, progress=False,
                             callback=lambda info: info.step >= steps)
                cache.max_bytes = int(cache.nbytes * share)
                cache.clear()
                pipe.stylize(prepared, inversion, segmentation, matching, steps=SCHEDULE, progress=False,
                             callback=lambda info: info.step >= steps)
                before = cache.hits
                pipe.stylize(prepared, inversion, segmentation, matching, steps=SCHEDULE, progress=False,
                             callback=lambda info: info.step >= steps)
                hits[share] = (cache.hits - before) / (steps * (prepared.n_styles + 1))
        finally:
            cache.max_bytes = limit
            cache.clear()
    log(f"  feature cache hit rate of a re-run: {hits[1.0]:.0%} when max_bytes holds the run's features, "
        f"{hits[0.75]:.0%} when it holds 75% of them")
    out["rerun_hit_rate"] = {str(k): v for k, v in hits.items()}
    return out


# ============================================================================================ loss only
def loss_bench(pipe, stages: dict, size: int, repeats: int, log=print, max_gib: float = 3.0) -> list[dict]:
    """Time targets + style loss + backward (no UNet) for every setting, in this process, on real features."""
    from stylegallery.stages import style_loss as SL

    device, dtype = pipe.device, pipe.dtype
    layers = sorted(pipe.default_loss_layers)
    max_refs = max(r for r, _ in stages)
    prepared, inversion, _, _ = load_stages(next(v["dir"] for (r, _), v in stages.items() if r == max_refs))
    pipe.scheduler.set_timesteps(SCHEDULE)
    t = int(pipe.scheduler.timesteps[SCHEDULE // 2])
    emb = pipe.backbone.embedding.expand(max_refs + 1, -1, -1)
    with torch.no_grad():
        rec = pipe.recorder.run(pipe.unet, prepared.latents.to(device, dtype), t, emb, keep=("q", "k", "v", "o"))
    rows = []
    for (n_refs, k), info in sorted(stages.items()):
        _, _, seg, matching = load_stages(info["dir"])
        labels = seg.labels
        q_c = {l: rec[l]["q"][0] for l in layers}  # the queries of the pass that gave the outputs, as in stylize
        style_records = [{l: {"k": rec[l]["k"][j + 1 : j + 2], "v": rec[l]["v"][j + 1 : j + 2]} for l in layers}
                         for j in range(n_refs)]
        outs = {l: rec[l]["o"][0].detach().clone().requires_grad_(True) for l in layers}
        plans, masks = {}, {}
        for l in layers:
            tokens = q_c[l].shape[1]
            if tokens not in plans:
                plans[tokens] = SL.region_plan(labels[0], list(labels[1:]), matching.matches, tokens, device)
                masks[tokens] = (region_masks(labels[0], tokens, device, dtype),
                                 [region_masks(labels[j + 1], tokens, device, dtype) for j in range(n_refs)])
        n_regions = seg.n_regions(0)

        def ours(mode, dense=False):
            total = 0
            for l in layers:
                plan = plans[q_c[l].shape[1]]
                keys = torch.cat([style_records[j][l]["k"][0] for j in range(n_refs)], dim=1)
                values = torch.cat([style_records[j][l]["v"][0] for j in range(n_refs)], dim=1)
                with torch.no_grad():
                    if dense:
                        target = dense_masked_targets(q_c[l], keys, values, plan, 1.5)
                    else:
                        target = SL.style_targets(q_c[l], keys, values, plan, mode, 1.5)
                total = total + SL.region_style_loss(outs[l], target, plan, n_regions, mode)
            return total

        def reference():
            total = 0
            for l in layers:
                total = total + reference_style_loss(outs[l], q_c[l], style_records, l, *masks[q_c[l].shape[1]],
                                                     matching.matches, 1.5)
            return total

        variants = {"ours_masked": lambda: ours("masked"), "ours_zeroed": lambda: ours("zeroed"),
                    "reference_zeroed": reference, "one_masked_attention": lambda: ours("masked", dense=True)}
        tokens_max = max(q_c[l].shape[1] for l in layers)
        heads = q_c[layers[0]].shape[0]
        row = {"refs": n_refs, "regions": n_regions, "size": size}
        values = {}
        for name, fn in variants.items():
            # one masked attention builds an (N, all keys) mask: skip where that is huge
            need = tokens_max * tokens_max * n_refs * (1 + heads * 4) / 2**30
            if name == "one_masked_attention" and need > max_gib:
                row[name] = {"skipped": f"needs about {need:.1f} GiB"}
                continue
            times = []
            mem = PeakMemory(device).start()
            for _ in range(repeats):
                for o in outs.values():
                    o.grad = None
                start = now(device)
                per_region = fn()
                per_region.sum().backward()
                times.append(now(device) - start)
            row[name] = {"s": min(times), "median_s": median(times), "memory_extra": mem.read()["extra"]}
            values[name] = per_region.detach().float().cpu()
        # equalities: the authors' per-region loss == ours zeroed; one masked attention == ours masked
        def rel(a, b):
            if a not in values or b not in values:
                return None
            return float((values[a] - values[b]).abs().max() / values[b].abs().max().clamp_min(1e-12))
        row["diff"] = {"reference_vs_ours_zeroed": rel("reference_zeroed", "ours_zeroed"),
                       "one_masked_attention_vs_ours_masked": rel("one_masked_attention", "ours_masked")}
        rows.append(row)
        log("  loss only  refs %d regions %d: %s" % (n_refs, n_regions, "  ".join(
            f"{name} {row[name]['s'] * 1000:.0f} ms" if "s" in row[name] else f"{name} skipped" for name in variants)))
    return rows


# ============================================================================================ report
def _per_step(run: dict, metric: str) -> float:
    """Cost of one step: the fastest of the timed steps (other processes only ever add time)."""
    return min(run[metric])


def _floor(results: dict) -> float:
    return min(t for run in results["floor"] for t in run[results["metric"]])


def _time_table(results: dict) -> list[str]:
    """Rows per setting; re-run / floor divides by the floor timed in the same process as the re-run."""
    m = results["metric"]
    unit = "CPU s" if m == "cpu" else "s"
    lines = [f"| refs | regions | reference {unit}/step | ours first {unit}/step | ours re-run {unit}/step | "
             "floor, same process | first / reference | re-run / floor | first / floor | reference / floor | "
             "peak RSS: reference (+ working) | ours first, cache excluded (+ working) | ours re-run in a fresh "
             "process, cache excluded | feature cache: these steps / 150 steps |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in sorted(results["runs"], key=lambda r: (r["refs"], r["regions"])):
        keys = ("reference", "first", "rerun")
        floor = _per_step(row["floor"], m)
        t = {k: _per_step(row[k], m) for k in keys}
        wall = {k: median(row[k]["times"]) for k in keys}
        ref, first, fresh = row["reference"]["memory"], row["first"]["memory"], row["rerun_fresh"]["memory"]
        cache = row["cache_bytes"]
        cells = [f"{t[k]:.2f}" + (f" ({wall[k]:.2f})" if m == "cpu" else "") for k in keys]
        lines.append(
            f"| {row['refs']} | {row['regions']} | " + " | ".join(cells) + f" | {floor:.2f} | "
            f"{t['first'] / t['reference']:.2f} | {t['rerun'] / floor:.2f} | {t['first'] / floor:.2f} | "
            f"{t['reference'] / floor:.2f} | {fmt_bytes(ref['peak'])} (+{fmt_bytes(ref['extra'])}) | "
            f"{fmt_bytes(first['without_cache'])} (+{fmt_bytes(first['without_cache'] - first['baseline'])}) | "
            f"{fmt_bytes(fresh['without_cache'])} | {fmt_bytes(cache)} / {fmt_bytes(cache / row['steps'] * SCHEDULE)} |")
    return lines


def summarise(results: dict) -> str:
    """Markdown tables of the measurements."""
    m = results["metric"]
    unit = "CPU s" if m == "cpu" else "s"
    floor = _floor(results)
    floor_wall = median([t for run in results["floor"] for t in run["times"]])
    fm = results["floor"][0]["memory"]
    lines = [f"Floor (one full UNet forward + backward on the latent): **{floor:.2f} {unit}/step** "
             f"(fastest step of the runs at start and end: "
             + " / ".join(f"{_per_step(r, m):.2f}" for r in results["floor"])
             + "; of the runs in the `ours` processes: "
             + ", ".join(f"{_per_step(r['floor'], m):.2f}" for r in results["runs"])
             + f"; median wall {floor_wall:.2f} s), peak RSS {fmt_bytes(fm['peak'])} "
             f"(+{fmt_bytes(fm['extra'])} over the loaded, paged-in model).", "",
             f"Per step: the fastest of the {results['steps']} timed steps"
             + (", in CPU seconds of the process (median wall-clock seconds in brackets)" if m == "cpu" else "")
             + ". Ours = `StyleGallery.stylize` as it is (`region_attention=\"zeroed\"`).", ""]
    lines += _time_table(results)
    if results.get("loss"):
        lines += ["", "Style loss alone (targets + loss + backward over the 6 loss layers, no UNet, real features of "
                  "one timestep), fastest of the repeats in ms; extra peak RSS in brackets. `ours_*` = "
                  "`style_loss.style_targets` (one attention per matched region over only the keys it may see); "
                  "`reference_zeroed` = the authors' per-region attention over region-masked tensors; "
                  "`one_masked_attention` = one attention per layer over all references' keys with an (N, M) "
                  "region mask (`dense_masked_targets`).", ""]
        names = ["ours_masked", "ours_zeroed", "reference_zeroed", "one_masked_attention"]
        lines.append("| size | refs | regions | " + " | ".join(names) + " | max rel. diff: reference vs ours_zeroed, "
                     "one masked attention vs ours_masked |")
        lines.append("|---:|---:|---:|" + "---:|" * len(names) + "---|")
        for row in results["loss"]:
            cells = []
            for n in names:
                v = row[n]
                cells.append(v["skipped"] if "skipped" in v else f"{v['s'] * 1000:.0f} (+{fmt_bytes(v['memory_extra'])})")
            d = row["diff"]
            diffs = ", ".join("-" if d[k] is None else f"{d[k]:.0e}" for k in d)
            lines.append(f"| {row['size']} | {row['refs']} | {row['regions']} | " + " | ".join(cells) + f" | {diffs} |")
    return "\n".join(lines)


def _verdicts(results: dict) -> list[str]:
    first, rerun, label = "first", "rerun", "ours"
    m = results["metric"]
    floor = _floor(results)
    runs = results["runs"]
    out = []
    by_refs = {}
    for row in runs:
        by_refs.setdefault(row["refs"], []).append(row)
    for refs, rows in sorted(by_refs.items()):
        rows = sorted(rows, key=lambda r: r["regions"])
        if len(rows) < 2:
            continue
        lo, hi = rows[0], rows[-1]
        for kind in (first, rerun):
            g = _per_step(hi[kind], m) / _per_step(lo[kind], m) - 1
            out.append(f"- {label} {'first run' if kind == first else 're-run'}, {refs} refs, {lo['regions']} -> "
                       f"{hi['regions']} regions: {g * 100:+.1f}% time per step "
                       f"({'met' if g <= 0.10 else 'NOT met'}: target <= +10%)")
    same = rerun.replace("rerun", "floor")
    worst = max(runs, key=lambda r: _per_step(r[rerun], m) / _per_step(r[same], m))
    ratio = _per_step(worst[rerun], m) / _per_step(worst[same], m)
    out.append(f"- {label} re-run / floor (floor timed in the same process): worst {ratio:.2f}x at {worst['refs']} "
               f"refs, {worst['regions']} regions ({'met' if ratio <= 1.15 else 'NOT met'}: target <= 1.15x); "
               f"against the fastest floor step of all runs: worst "
               f"{max(_per_step(r[rerun], m) for r in runs) / floor:.2f}x")
    worst = max(runs, key=lambda r: _per_step(r[first], m) / _per_step(r["reference"], m))
    ratio = _per_step(worst[first], m) / _per_step(worst["reference"], m)
    out.append(f"- {label} first run / reference: worst {ratio:.2f}x at {worst['refs']} refs, {worst['regions']} "
               f"regions ({'met' if ratio <= 1.0 else 'NOT met'}: target <= 1.00x)")
    peak = max(r[first]["memory"]["without_cache"] / r["reference"]["memory"]["peak"] for r in runs)
    again = max(r["rerun_fresh"]["memory"]["without_cache"] / r["reference"]["memory"]["peak"] for r in runs)
    out.append(f"- {label} peak RSS / reference's, cache excluded, worst setting: first run {peak:.3f}x, re-run (fresh "
               f"process) {again:.3f}x ({'met' if max(peak, again) <= 1.0 else 'NOT met'}: target <= 1.00x)")
    return out


def targets_report(results: dict) -> str:
    """Whether the four targets of issue 4 are met, from the measurements."""
    m = results["metric"]
    out = []
    by_refs = {}
    for row in results["runs"]:
        by_refs.setdefault(row["refs"], []).append(row)
    for refs, rows in sorted(by_refs.items()):
        rows = sorted(rows, key=lambda r: r["regions"])
        if len(rows) >= 2:
            g = _per_step(rows[-1]["reference"], m) / _per_step(rows[0]["reference"], m) - 1
            out.append(f"- reference, {refs} refs, {rows[0]['regions']} -> {rows[-1]['regions']} regions: "
                       f"{g * 100:+.1f}% time per step (for comparison)")
    out += _verdicts(results)
    loss_rows = [r for r in results.get("loss", []) if r["size"] == results["size"]]
    for refs in sorted({r["refs"] for r in loss_rows}):
        rows = sorted([r for r in loss_rows if r["refs"] == refs], key=lambda r: r["regions"])
        if len(rows) >= 2:
            parts = []
            for name in ("ours_masked", "ours_zeroed", "reference_zeroed", "one_masked_attention"):
                if "s" in rows[0][name] and "s" in rows[-1][name]:
                    parts.append(f"{name} {(rows[-1][name]['s'] / rows[0][name]['s'] - 1) * 100:+.0f}%")
            out.append(f"- style loss alone, {refs} refs, {rows[0]['regions']} -> {rows[-1]['regions']} regions: "
                       + ", ".join(parts))
    return "\n".join(out)


def report(results: dict, readme: bool) -> None:
    """Print the tables and the verdicts; with ``readme`` also write them into benchmarks/README.md."""
    table = summarise(results)
    verdict = targets_report(results)
    print("\n" + table + "\n\n" + verdict, flush=True)
    print(f"\ntotal {results['seconds'] / 60:.1f} min", flush=True)
    if not readme:
        return
    info = results["machine"]
    text = (f"Measured with `{results.get('command', 'python benchmarks/bench_stylize.py')}` on {info.get('cpu')} "
            f"({info.get('cpus')} CPUs, {info.get('memory_gib')} GiB, torch {info.get('torch')}, "
            f"{results.get('threads', info.get('threads'))} thread(s)), code {results.get('code', 'unknown')}; model "
            f"`{results['model']}` on {results['device']} ({results['dtype']}), {results['size']} px, "
            f"{results['steps']} steps per variant; load average {results['load_average_start']} at the start, "
            f"{results['load_average_end']} at the end; {results['seconds'] / 60:.1f} min in all.\n\n"
            + table + "\n\nTargets:\n\n" + verdict)
    if "check" in results:
        c = results["check"]
        text += (f"\n\nChecks: the reference loop equals `stylize(region_attention=\"zeroed\")` to "
                 f"{max(c['loss_rel_diff'], c['region_rel_diff'], c['latent_rel_diff']):.0e} (relative). "
                 "Feature-cache hit rate of a re-run: "
                 + ", ".join(f"{float(v):.0%} with max_bytes = {float(k):.0%} of one run's features"
                             for k, v in c.get("rerun_hit_rate", {}).items()) + ".")
    model = results["model"] if results["model"] in ("sd15", "tiny") else "other"
    replace_section(SCRIPT.parent / "README.md", f"stylize-{model}", text)


# ============================================================================================ main
def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="sd15", help="sd15 (random-weight SD 1.5 architecture, default), tiny, or a "
                    "diffusers SD 1.x folder / Hub id")
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda, mps, auto")
    ap.add_argument("--dtype", default="auto", help="auto (float32 on CPU, float16 on CUDA), float32, float16, bfloat16")
    ap.add_argument("--size", type=int, default=256, help="working size in pixels (default 256)")
    ap.add_argument("--steps", type=int, default=3, help="optimization steps timed per variant (default 3)")
    ap.add_argument("--refs", default="1,2,4", help="numbers of references (default 1,2,4)")
    ap.add_argument("--regions", default="2,5,8", help="numbers of matched regions (default 2,5,8)")
    ap.add_argument("--inversion-steps", type=int, default=3,
                    help="DDIM steps of the setup inversion (default 3: it only sets the starting latent)")
    ap.add_argument("--loss-repeats", type=int, default=3, help="repeats of the loss-only timing (default 3)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads (default: torch's choice). On a shared machine use 1: with 2 threads on 2 busy "
                    "cores every parallel region waits for a descheduled thread and steps take up to 10x longer")
    ap.add_argument("--quick", action="store_true", help="2 steps; refs 1,2 x regions 2,8")
    ap.add_argument("--no-check", action="store_true", help="skip the reference == stylize(zeroed) check")
    ap.add_argument("--json", default=None, help="write all measurements to this JSON file")
    ap.add_argument("--readme", action="store_true", help="write the tables into benchmarks/README.md")
    ap.add_argument("--from-json", default=None, help="only print (and with --readme write) the tables of a --json file")
    ap.add_argument("--worker", choices=("floor", "reference", "ours", "rerun"), help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.steps = min(args.steps, 2)
        args.refs, args.regions = "1,2", "2,8"
        args.loss_repeats = min(args.loss_repeats, 2)
    return args


def configs_of(args):
    refs = [int(x) for x in args.refs.split(",")]
    regions = [int(x) for x in args.regions.split(",")]
    mid_refs = refs[len(refs) // 2] if len(refs) > 2 else refs[-1]
    mid_regions = regions[len(regions) // 2]
    # the references sweep at the middle number of regions, the regions sweep at the middle number of references
    configs = {(r, mid_regions) for r in refs} | {(mid_refs, k) for k in regions}
    if args.quick:
        configs = {(r, k) for r in refs for k in regions}
    return sorted(configs)


def main(argv=None):
    args = parse(argv)
    if args.worker:
        worker(args)
        return
    if args.from_json:
        results = json.loads(Path(args.from_json).read_text())
        report(results, args.readme)
        return
    t_start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)

    def log(*a):
        print(*a, flush=True)

    info = machine()
    log(f"machine: {info}  load average: {load_average()}")
    configs = configs_of(args)
    log(f"model {args.model}, device {args.device}, {args.size} px, {args.steps} steps per variant, settings "
        f"(refs, regions): {configs}")
    folder = Path(tempfile.mkdtemp(prefix="bench-stylize-"))
    pipe = load_pipe(args.model, args.device, args.dtype)
    command = "python benchmarks/bench_stylize.py " + " ".join(
        a for a in (argv if argv is not None else sys.argv[1:]) if a != "--readme")
    results = {"command": command.strip(), "machine": info, "model": args.model, "device": str(pipe.device),
               "dtype": str(pipe.dtype),
               "size": args.size, "steps": args.steps, "threads": torch.get_num_threads(), "code": code_state(),
               "metric": "cpu" if pipe.device.type == "cpu" else "times", "load_average_start": load_average()}
    if not args.no_check:
        results["check"] = check_reference(pipe, folder / "check", log)
    log("setup")
    stages = build_stages(pipe, folder, args.size, configs, args.inversion_steps, log)
    for key, value in stages.items():
        if value["content_regions"] != key[1]:
            log(f"  warning: asked for {key[1]} regions, the content has {value['content_regions']}")
    log("style loss alone")
    results["loss"] = loss_bench(pipe, stages, args.size, args.loss_repeats, log)
    del pipe
    gc.collect()

    common = ["--model", args.model, "--device", args.device, "--dtype", args.dtype, "--steps", str(args.steps),
              "--threads", str(args.threads)]
    log("floor")
    first_dir = stages[configs[0]]["dir"]
    results["floor"] = [run_worker(SCRIPT, ["--worker", "floor", "--dir", first_dir, *common])]
    log(f"  {median(results['floor'][0]['times']):.2f} s/step wall, {median(results['floor'][0]['cpu']):.2f} CPU s/step")
    results["runs"] = []
    for n_refs, k in configs:
        d = stages[(n_refs, k)]
        ref = run_worker(SCRIPT, ["--worker", "reference", "--dir", d["dir"], *common])
        ours = run_worker(SCRIPT, ["--worker", "ours", "--dir", d["dir"], *common])
        fresh = run_worker(SCRIPT, ["--worker", "rerun", "--dir", d["dir"], *common])
        row = {"refs": n_refs, "regions": d["content_regions"], "style_regions": d["style_regions"],
               "references_used": d["references_used"], "steps": args.steps, "reference": ref,
               "first": ours["first"], "rerun": ours["rerun"], "cache_bytes": ours["cache_bytes"],
               "rerun_cache_hits": ours["rerun_cache_hits"], "floor": ours["floor"], "rerun_fresh": fresh["rerun"],
               "rerun_fresh_cache_bytes": fresh["rerun_cache_bytes"]}
        results["runs"].append(row)
        log(f"  refs {n_refs} regions {d['content_regions']}: reference {median(ref['times']):.2f}  ours first "
            f"{median(ours['first']['times']):.2f}  re-run {median(ours['rerun']['times']):.2f} s/step wall; CPU s/step "
            f"{median(ref['cpu']):.2f}, {median(ours['first']['cpu']):.2f}, {median(ours['rerun']['cpu']):.2f}")
    log("floor again")
    results["floor"].append(run_worker(SCRIPT, ["--worker", "floor", "--dir", first_dir, *common]))
    results["load_average_end"] = load_average()
    results["seconds"] = time.perf_counter() - t_start

    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    report(results, args.readme)
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
