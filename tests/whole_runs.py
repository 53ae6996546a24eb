"""Helpers of the precision and GPU tests: the tiny models loaded in a dtype on a device, and one small whole run."""

import numpy as np
import torch

from stylegallery import StyleGallery

#: the largest mean difference (grey levels of 255) from the CPU float32 result of the same stages
PIXEL_TOLERANCE = {torch.float16: 2.0, torch.bfloat16: 8.0}


def load(model_dir, dtype, device="cpu", **kwargs):
    """The tiny models (with their DINOv2 and depth) in ``dtype`` on ``device``."""
    return StyleGallery.from_pretrained(str(model_dir / "sd"), semantic_model=str(model_dir / "dinov2"),
                                        depth_model=str(model_dir / "depth"), device=str(device), torch_dtype=dtype,
                                        **kwargs)


def planted(size=128):
    """(content, references) of the planted scene."""
    from synthetic import planted_scene

    (content, *refs), _ = planted_scene(size)
    return content, refs


def whole_run(pipe, scene, **extra):
    """Every stage at 128 px: 5 inversion steps, 3 regions, 4 stylize steps."""
    content, refs = scene
    return pipe(content, refs, size=128, inversion_steps=5, n_clusters=3, steps=4, progress=False, **extra)


def finite_history(result) -> bool:
    return all(np.isfinite(v) for step in result.history for v in step.values() if isinstance(v, float))


def lora_round_trip(pipe, out, lora_dir):
    """Load the LoRA, stylize 2 steps with it fused, unfuse: (UNet weights before, after (LoRA layers' names
    mapped back), the stylization); the LoRA is unloaded after."""
    base = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    pipe.load_lora_weights(str(lora_dir))
    try:
        result = pipe.stylize(out.prepared, out.inversion, out.segmentation, out.matching, steps=2, progress=False)
        assert pipe.lora.fused
        pipe.lora.unfuse()
        after = {k.replace(".base_layer", ""): v for k, v in pipe.unet.state_dict().items() if "lora_" not in k}
    finally:
        pipe.unload_lora_weights()
    return base, after, result


def run_batch(model_dir, scene, folder, device, dtype) -> dict:
    """``stylegallery batch`` of the scene's content with its first reference (64 px, 2 steps) into ``folder``;
    the job's report, with its picture as an array under ``"pixels"``."""
    import json

    from PIL import Image

    from stylegallery.tools.cli import main

    content, refs = scene
    (folder / "contents").mkdir(parents=True, exist_ok=True)
    (folder / "styles").mkdir(exist_ok=True)
    content.save(folder / "contents" / "c.png")
    refs[0].save(folder / "styles" / "s.png")
    out = folder / f"out-{dtype}"
    code = main(["batch", "--contents", str(folder / "contents"), "--styles", str(folder / "styles"), "-o", str(out),
                 "--model", str(model_dir / "sd"), "--semantic-model", str(model_dir / "dinov2"), "--depth-model",
                 str(model_dir / "depth"), "--size", "64", "--steps", "2", "--inversion-steps", "2", "--max-clusters",
                 "3", "--device", str(device), "--dtype", dtype, "--quiet"])
    assert code == 0
    report = json.loads(next(out.glob("jobs/*/report.json")).read_text())
    (picture,) = out.glob("jobs/*/result.png")
    return dict(report, pixels=np.asarray(Image.open(picture)).astype(float))
