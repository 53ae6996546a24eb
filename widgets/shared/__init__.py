"""What the widgets share: running stages in a worker thread (:mod:`.runs`), pictures as PNG bytes (:mod:`.pictures`)
and the display machinery of an anywidget with a static fallback (:mod:`.display`, ``common.js``, ``style.css``).
The widgets themselves are the modules one folder up."""
