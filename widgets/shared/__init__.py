"""What the widgets share: running stages in a worker thread (:mod:`.runs`), pictures as PNG bytes (:mod:`.pictures`),
pictures in files and the views' save-PNG button (:mod:`.export`) and the display machinery of an anywidget with a
static fallback (:mod:`.display`, ``common.js``, ``style.css``).
The widgets themselves are the modules one folder up."""
