"""The tutorial notebooks are committed clean and carry what Colab, papermill and the tests rely on.

Running them is nbval's job (``pytest --nbval-lax notebooks/``, set up by notebooks/conftest.py); these checks
read the files only, so they are quick.
"""

import ast
import json
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = ["01_quickstart", "02_regions", "03_matching", "04_style_loss", "05_personalization", "06_material_transfer"]
COLAB = "https://colab.research.google.com/github/stylegallery/stylegallery/blob/main/notebooks/{}.ipynb"
PIP = 'install -q "stylegallery[notebook] @ git+https://github.com/stylegallery/stylegallery"'


def test_the_six_notebooks_are_there():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == NAMES


@pytest.fixture(params=NAMES)
def notebook(request):
    path = NOTEBOOKS / f"{request.param}.ipynb"
    nb = nbformat.read(str(path), as_version=4)
    nbformat.validate(nb)
    return request.param, nb, json.loads(path.read_text(encoding="utf-8"))


def test_committed_without_outputs_or_widget_state(notebook):
    _, nb, raw = notebook
    assert "widgets" not in raw["metadata"]
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
        assert "widgets" not in cell.metadata and "execution" not in cell.metadata


def test_colab_badge_install_cell_and_parameters(notebook):
    name, nb, _ = notebook
    first = nb.cells[0]
    assert first.cell_type == "markdown"
    assert "https://colab.research.google.com/assets/colab-badge.svg" in first.source
    assert COLAB.format(name) in first.source

    install = nb.cells[1].source
    assert 'IN_COLAB = "google.colab" in sys.modules' in install and "if IN_COLAB:" in install
    assert PIP in install
    guarded = install.split("if IN_COLAB:", 1)[1]
    assert PIP in guarded  # nothing is installed outside Colab

    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0].cell_type == "code"
    params = tagged[0].source
    for line in ('MODEL = os.environ.get("STYLEGALLERY_MODEL")', 'int(os.environ.get("STYLEGALLERY_SIZE", 512))',
                 'int(os.environ.get("STYLEGALLERY_STEPS", 150))', 'DEVICE = "auto"'):
        assert line in params
    later = "\n".join(c.source for c in nb.cells[nb.cells.index(tagged[0]) + 1 :] if c.cell_type == "code")
    assert "StyleGallery.from_pretrained(MODEL, device=DEVICE)" in later


def test_code_cells_are_plain_python(notebook):
    """No cell magics or shell escapes: each cell parses as Python (IPython helpers go through get_ipython())."""
    name, nb, _ = notebook
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            try:
                ast.parse(cell.source)
            except SyntaxError as exc:  # pragma: no cover - the message names the cell
                pytest.fail(f"{name} cell {index}: {exc}")
