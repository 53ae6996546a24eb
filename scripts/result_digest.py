"""Print a SHA-256 of every stage's result for one run, to check that a change of code leaves results unchanged.

Uses the public API only, so the same command can be run before and after a refactor; two runs on the same machine
with the same arguments must print the same lines. Example (random-weight test models, offline)::

    HF_HUB_OFFLINE=1 python scripts/result_digest.py --model tiny --size 256 --steps 20
    HF_HUB_OFFLINE=1 python scripts/result_digest.py --model sd15 --size 128 --steps 3
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import torch

from stylegallery import StyleGallery

DATA = Path(__file__).resolve().parent.parent / "data"


def digest(*tensors: torch.Tensor) -> str:
    """SHA-256 (first 16 hex digits) of the tensors' bytes, in order."""
    h = hashlib.sha256()
    for tensor in tensors:
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the sums' order depends on it)")
    args = parser.parse_args()
    torch.manual_seed(0)
    pipe = StyleGallery.from_pretrained(args.model, device="cpu")
    pipe.cpu_threads = args.threads
    content = DATA / "content_astronaut.jpg"
    styles = [DATA / "style_painting.png", DATA / "style_brick.jpg"]
    out = pipe(content, styles, size=args.size, steps=args.steps, progress=False)
    lines = {
        "prepare": digest(out.prepared.pixels, out.prepared.latents),
        "invert": digest(out.inversion.trajectories, out.inversion.features),
        "segment": digest(out.segmentation.labels),
        "match": digest(out.matching.score, out.matching.statistical, out.matching.semantic, out.matching.geometric)
        + " " + json.dumps(out.matching.matches),
        "stylize": digest(out.stylization.latent, out.stylization.pixels),
        "losses": hashlib.sha256(json.dumps(out.stylization.history).encode()).hexdigest()[:16],
    }
    for stage, value in lines.items():
        print(f"{stage:8s} {value}")


if __name__ == "__main__":
    main()
