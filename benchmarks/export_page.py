"""The exported session page: its size in bytes and how long ``Session.export_html`` takes.

A session of the sample content with ``--refs`` references runs to the end (2 inversion steps, ``--steps``
stylize steps, ``--regions`` content regions), then is exported ``--repeats`` times to a fresh file each time.
The first export computes what the run left out: the attention maps at every content region's centre in three
modes (the run's first timestep, whose features stylize cached) and the per-region scores with the content loss
(one UNet pass on the result); the next ones reuse the result's queries. The page's bytes are split into the
shared pictures (content, references, result, the content at the result's size: JPEG), the attention heat maps
(JPEG), the region and loss data (JSON), the inlined script and styles, and the markup.

Run from the repository root::

    python benchmarks/export_page.py --readme                     # tiny models, CPU, 512 px, 2 references
    python benchmarks/export_page.py --model /path/to/sd15 --device cuda
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (CONTENT, STYLES, benchmark_parser, fmt_bytes, load_average, load_pipe, machine, median,  # noqa: E402
                    now, run_benchmark)

SCRIPT = Path(__file__).resolve()


def _parts(text: str) -> dict[str, int]:
    """The page's bytes by part (UTF-8)."""
    size = lambda s: len(s.encode("utf-8"))  # noqa: E731
    pictures = re.search(r'<script type="application/json" id="sg-pictures">(.*?)</script>', text, re.S).group(1)
    data = re.search(r'<script type="application/json" id="sg-data">(.*?)</script>', text, re.S).group(1)
    heat = sum(size(url) for url in re.findall(r'<img src="(data:[^"]+)"', text))
    code = sum(size(s) for s in re.findall(r"<(?:style|script)>(.*?)</(?:style|script)>", text, re.S))
    parts = {"pictures": size(pictures), "heat maps": heat, "region and loss data": size(data),
             "script and styles": code}
    parts["markup"] = size(text) - sum(parts.values())
    return parts


def measure(args) -> dict:
    from stylegallery import Session

    pipe = load_pipe(args.model, args.device, args.dtype)
    session = Session(pipe, CONTENT, STYLES[: args.refs], size=args.size, inversion_steps=2,
                      n_clusters=args.regions or None, steps=args.steps)
    session.run(progress=False)
    seconds, sizes = [], []
    with tempfile.TemporaryDirectory() as folder:
        for i in range(args.repeats):
            start = now(pipe.device)
            path = session.export_html(Path(folder) / f"page{i}.html")
            seconds.append(now(pipe.device) - start)
            sizes.append(path.stat().st_size)
        parts = _parts(path.read_text(encoding="utf-8"))
    return {
        "machine": machine(), "model": args.model, "device": str(pipe.device),
        "dtype": str(pipe.dtype).replace("torch.", ""), "size": args.size, "refs": args.refs,
        "regions": session.segmentation.n_regions(0),
        "style_regions": [session.segmentation.n_regions(i) for i in range(1, args.refs + 1)], "steps": args.steps,
        "timings": session.timings, "export_first": seconds[0], "export_again": median(seconds[1:]),
        "bytes": sizes[-1], "parts": parts, "load_average_end": load_average(),
    }


def render(r: dict) -> str:
    lines = [
        f"Model `{r['model']}` on {r['device']} ({r['dtype']}), {r['size']} px, {r['refs']} references; "
        f"{r['regions']} content regions, {', '.join(map(str, r['style_regions']))} style regions; "
        f"{r['steps']} stylize steps.",
        "",
        "| what | value |",
        "|---|---:|",
        f"| `export_html`, first (attention maps, scores with the content loss: a UNet pass) | {r['export_first']:.2f} s |",
        f"| `export_html` again (the result's queries reused) | {r['export_again']:.2f} s |",
        f"| page size | {r['bytes']:,} bytes ({fmt_bytes(r['bytes'])}) |",
    ]
    lines += [f"| - {name} | {count:,} bytes |" for name, count in r["parts"].items()]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = benchmark_parser(__doc__)
    parser.set_defaults(model="tiny", size=512)
    parser.add_argument("--steps", type=int, default=5, help="stylize steps of the run exported")
    parser.add_argument("--repeats", type=int, default=3, help="exports timed (the first, then the median of the rest)")
    args = parser.parse_args(argv)
    if args.repeats < 2:
        parser.error("--repeats must be at least 2 (the first export and at least one more)")
    run_benchmark(SCRIPT, args, measure, render, "export-page")


if __name__ == "__main__":
    main()
