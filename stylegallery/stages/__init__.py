"""The method, stage by stage: the maths of StyleGallery in small pure modules (tensors and arrays in, tensors and
arrays out; no model loading, no caching, no files).

- :mod:`.inversion`: DDIM inversion and the temporally weighted decoder features (stage 1).
- :mod:`.segmentation`: adaptive clustering of those features into regions (stage 2).
- :mod:`.matching`: statistical, semantic and geometric similarity of regions, and the match matrices (stage 3).
- :mod:`.attention`: the attention processor that records queries, keys, values and outputs of the loss layers.
- :mod:`.style_loss`: the regional attention style loss and the content loss (stage 4).
- :mod:`.stylize`: stage 4's optimization loop as a plain function, and StyleGallery's energy as a loss for it.
- :mod:`.attention_maps`: where a content point attends under the style loss's target (for inspection).

:class:`stylegallery.StyleGallery` runs them on its models and caches; the settings and their defaults are declared
in :mod:`stylegallery.settings`.
"""
