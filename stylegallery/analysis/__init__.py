"""Looking at results: figures of every stage (:mod:`.plot`, public as ``stylegallery.plot``), the arrays they draw
(:mod:`.pictures`), per-region scores (:mod:`.metrics`, public as ``stylegallery.metrics``), cheap previews of a
latent (:mod:`.preview`) and the JSON report of a run (:mod:`.report`)."""
