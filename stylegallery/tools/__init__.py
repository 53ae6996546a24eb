"""Tools around the method: the ``stylegallery`` command line (:mod:`.cli`), batch runs of a plan (:mod:`.batch`)
and their HTML gallery (:mod:`.gallery`)."""
