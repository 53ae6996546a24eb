"""The StageExplorer's controls: each stage's main settings as ipywidgets (read from the session, whose defaults
come from :data:`stylegallery.settings.STAGE_SETTINGS`), the preset choice, the folds' titles and status badges."""

from __future__ import annotations

import html

import ipywidgets as W
import traitlets as t

from stylegallery.models.presets import PRESETS
from stylegallery.session import Session

TITLES = {
    "prepare": "1 · prepare: read, resize, encode",
    "invert": "2 · invert: DDIM inversion and features",
    "segment": "3 · segment: regions by clustering",
    "match": "4 · match: content regions to style regions",
    "stylize": "5 · stylize: latent optimization",
}
SIZES = [128, 192, 256, 320, 384, 448, 512, 576, 640, 704, 768, 1024]
BADGE = {
    "stale": "background:#fff3cd;color:#7a5600;border:1px solid #e0c36b",
    "done": "background:#e3f4e6;color:#1d6b2c;border:1px solid #9ccfa6",
    "running": "background:#e3eefc;color:#0d47a1;border:1px solid #90b4e8",
    "error": "background:#fde2e2;color:#9b1c1c;border:1px solid #e59a9a",
}
STYLE = {"description_width": "initial"}
PAPER = "paper"  # the preset control's value for the paper's settings without a LoRA
PRESET_NAMES = {"lcm": "LCM-LoRA", "hyper-sd": "Hyper-SD"}


class NoneDropdown(W.Dropdown):
    """A Dropdown one of whose options has the value None (the output size's "working size"): ipywidgets 8 reads a
    value of None as "nothing chosen" and shows a blank control; this one shows that option."""

    def __init__(self, options, value=None, **kwargs):
        super().__init__(options=options, index=[v for _, v in options].index(value), **kwargs)

    @t.observe("value")
    def _propagate_value(self, change):
        if change.new is None and None in self._options_values:
            self.index = self._options_values.index(None)
        else:
            super()._propagate_value(change)


def badge(kind: str, text: str) -> str:
    """A stage's status badge (``kind``: stale, done, running or error) as HTML."""
    return (f'<span class="sg-badge sg-badge-{kind}" style="display:inline-block;font-size:11px;padding:0 7px;'
            f'border-radius:8px;margin-left:8px;{BADGE[kind]}">{html.escape(text)}</span>')


def preset_options() -> list[tuple[str, str]]:
    """The preset control's choices: the paper's settings, then every fast preset. The labels name the scheduler and
    the LoRA only: steps and the other settings are the controls' own (a label must not contradict them)."""
    return [("paper: DDIM, no LoRA", PAPER)] + [
        (f"fast: {PRESET_NAMES.get(name, name)} ({p.scheduler})", name) for name, p in PRESETS.items()]


def current_preset(session: Session) -> str:
    """The preset the session's stylize settings come from: the one whose LoRA is loaded, or else the one with
    the session's scheduler and a LoRA of the user's own."""
    loaded = session.pipe.lora_preset
    if loaded in PRESETS and session.value("scheduler") == PRESETS[loaded].scheduler:
        return loaded
    if session.pipe.lora is not None:
        for name, preset in PRESETS.items():
            if session.value("scheduler") == preset.scheduler:
                return name
    return PAPER


def output_options(size, current) -> list[tuple[str, object]]:
    """The output size control's choices: the working size (no refinement), 2x and 4x the working size's long side
    and 1024, 2048, 4096 px above it, and the current value."""
    long_side = max(size) if isinstance(size, (tuple, list)) else size
    sides = sorted(n for n in {2 * long_side, 4 * long_side, 1024, 2048, 4096} if n > long_side)
    options = [("working size", None)] + [(f"{n} px", n) for n in sides]
    if current is not None and current not in sides:
        label = f"{current[0]}×{current[1]}" if isinstance(current, (tuple, list)) else f"{current} px"
        options.append((label, current))
    return options


def stage_controls(session: Session) -> dict[str, list[tuple[str, W.Widget]]]:
    """The main settings of every stage as ipywidgets controls, set to the session's current values."""
    v = session.value
    size = v("size")
    size_options = [(f"{s} px", s) for s in SIZES]
    if size not in SIZES:
        size_options.insert(0, (f"{size[0]}×{size[1]}" if isinstance(size, (tuple, list)) else f"{size} px", size))
    depth_available = session.pipe.depth_model is not None
    semantic_available = session.pipe.semantic_model is not None
    floats = dict(continuous_update=False, style=STYLE, readout_format=".3f")
    return {
        "prepare": [("size", W.Dropdown(options=size_options, value=size, description="size", style=STYLE))],
        "invert": [("inversion_steps", W.IntSlider(value=v("inversion_steps"), min=1, max=max(50, v("inversion_steps")),
                                                   description="inversion steps", continuous_update=False, style=STYLE))],
        "segment": [
            ("max_clusters", W.IntSlider(value=v("max_clusters"), min=2, max=max(16, v("max_clusters")),
                                         description="max clusters", continuous_update=False, style=STYLE)),
            ("merge_threshold", W.FloatSlider(value=v("merge_threshold"), min=0.0, max=max(3.0, v("merge_threshold")),
                                              step=0.05, description="merge threshold", **dict(floats, readout_format=".2f"))),
            ("use_depth", W.Checkbox(value=bool(v("use_depth")) and depth_available, description="use depth",
                                     disabled=not depth_available, indent=False)),
        ],
        "match": [
            ("statistical_weight", W.FloatSlider(value=v("statistical_weight"), min=0.0, max=2.0, step=0.005,
                                                 description="statistical", **floats)),
            ("semantic_weight", W.FloatSlider(value=v("semantic_weight"), min=0.0, max=2.0, step=0.005,
                                              description="semantic" + ("" if semantic_available else " (no model)"),
                                              disabled=not semantic_available, **floats)),
            ("geometric_weight", W.FloatSlider(value=v("geometric_weight"), min=0.0, max=2.0, step=0.005,
                                               description="geometric", **floats)),
        ],
        "stylize": [
            ("steps", W.IntSlider(value=v("steps"), min=1, max=max(300, v("steps")), description="steps",
                                  continuous_update=False, style=STYLE)),
            ("iters", W.BoundedIntText(value=v("iters"), min=1, max=max(10, v("iters")), description="iters",
                                       style=STYLE, layout=W.Layout(width="110px"))),
            ("lr", W.BoundedFloatText(value=v("lr"), min=1e-4, max=10.0, step=0.01, description="lr", style=STYLE,
                                      layout=W.Layout(width="150px"))),
            ("c_ratio", W.FloatSlider(value=v("c_ratio"), min=0.0, max=2.0, step=0.01, description="c_ratio",
                                      **dict(floats, readout_format=".2f"))),
            ("region_attention", W.Dropdown(options=["zeroed", "masked"], value=v("region_attention"),
                                            description="region attention", style=STYLE)),
            ("output_size", NoneDropdown(output_options(size, v("output_size")), value=v("output_size"),
                                       description="output size", style=STYLE)),
            ("keep_colours", W.Checkbox(value=bool(v("keep_colours")), description="keep the content's colours",
                                        indent=False, layout=W.Layout(width="200px"))),
        ],
    }
