"""The tutorial notebooks are committed clean and carry what Colab, papermill and the tests rely on.

Running them is nbval's job (``pytest --nbval-lax notebooks/``, set up by notebooks/conftest.py); these checks
read the files (and run the parameters cell alone), so they are quick.
"""

import ast
import contextlib
import io
import json
import re
import tomllib
from pathlib import Path

import nbformat
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
NAMES = ["01_quickstart", "02_regions", "03_matching", "04_style_loss", "05_personalization", "06_material_transfer",
         "07_interpret", "08_high_resolution"]
# the repository's address lives in the package metadata only; the notebooks' badges and install cells follow it
REPOSITORY = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["urls"]["Repository"]
GITHUB_PATH = REPOSITORY.removeprefix("https://github.com/")
COLAB = f"https://colab.research.google.com/github/{GITHUB_PATH}/blob/main/notebooks/{{}}.ipynb"
PIP = "install -q \"stylegallery[notebook] @ git+{REPOSITORY}\""


def test_the_eight_notebooks_are_there():
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


def test_colab_badge_and_install_cell_point_at_the_repository(notebook):
    name, nb, raw = notebook
    assert REPOSITORY.startswith("https://github.com/") and GITHUB_PATH.count("/") == 1
    first = nb.cells[0]
    assert first.cell_type == "markdown"
    assert "https://colab.research.google.com/assets/colab-badge.svg" in first.source
    assert COLAB.format(name) in first.source

    install = nb.cells[1].source
    assert 'IN_COLAB = "google.colab" in sys.modules' in install and "if IN_COLAB:" in install
    guarded = install.split("if IN_COLAB:", 1)[1]  # nothing is installed outside Colab
    assert f'REPOSITORY = "{REPOSITORY}"' in guarded and PIP in guarded
    assert 'system(f"git clone -q --depth 1 {REPOSITORY} ' in guarded
    text = json.dumps(raw)
    # no other copy of an address: every GitHub repository named anywhere in the notebook is this one
    assert set(re.findall(r"github\.com/([\w.-]+/[\w.-]+)", text)) == {GITHUB_PATH}
    assert set(re.findall(r"colab\.research\.google\.com/github/([\w.-]+/[\w.-]+)", text)) == {GITHUB_PATH}


def _parameters(nb):
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0].cell_type == "code"
    return tagged[0]


def test_parameters_cell_is_the_same_everywhere_and_feeds_the_pipeline(notebook):
    name, nb, _ = notebook
    cell = _parameters(nb)
    first = nbformat.read(str(NOTEBOOKS / f"{NAMES[0]}.ipynb"), as_version=4)
    assert cell.source == _parameters(first).source
    later = "\n".join(c.source for c in nb.cells[nb.cells.index(cell) + 1 :] if c.cell_type == "code")
    assert "StyleGallery.from_pretrained(MODEL, device=DEVICE, torch_dtype=DTYPE, low_memory=LOW_MEMORY)" in later


@pytest.mark.parametrize(
    "cuda, environment, expected",
    [
        (True, {}, (None, 512, 150)),  # the real models on a GPU: the paper's settings
        (False, {}, (None, 256, 50)),  # no GPU: quick settings
        (True, {"STYLEGALLERY_MODEL": "tiny"}, ("tiny", 256, 50)),  # the tiny test models: quick settings
        (False, {"STYLEGALLERY_SIZE": "256", "STYLEGALLERY_STEPS": "7"}, (None, 256, 7)),  # the variables win
    ],
)
def test_parameters_cell_picks_quick_settings_without_a_gpu(monkeypatch, cuda, environment, expected):
    for variable in ("STYLEGALLERY_MODEL", "STYLEGALLERY_SIZE", "STYLEGALLERY_STEPS", "STYLEGALLERY_INVERSION_STEPS",
                     "STYLEGALLERY_MAX_CLUSTERS"):
        monkeypatch.delenv(variable, raising=False)
    for variable, value in environment.items():
        monkeypatch.setenv(variable, value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    nb = nbformat.read(str(NOTEBOOKS / f"{NAMES[0]}.ipynb"), as_version=4)
    scope, printed = {}, io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(_parameters(nb).source, scope)
    assert (scope["MODEL"], scope["SIZE"], scope["STEPS"]) == expected
    assert (scope["DTYPE"], scope["LOW_MEMORY"]) == ("auto", "auto")  # from_pretrained chooses from the device
    assert (scope["INVERSION_STEPS"], scope["MAX_CLUSTERS"], scope["DEVICE"]) == (15, 10, "auto")
    lines = printed.getvalue().splitlines()
    if expected[1:] == (512, 150):
        assert lines == []
    else:  # one line says why the settings are not the paper's
        assert len(lines) == 1 and f"{expected[1]} px and {expected[2]} steps" in lines[0] and "512 px" in lines[0]


def test_long_calls_show_their_progress(notebook):
    """No stage is told ``progress=False``: on a CPU a silent stage looks like a hung notebook."""
    name, nb, _ = notebook
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert "progress=False" not in cell.source, f"{name} cell {index}"


def test_every_exercise_has_an_answer_cell_and_a_locked_check(notebook):
    """Each numbered exercise has a code cell that answers it (nbgrader solution: the answer between ``### BEGIN
    SOLUTION`` and ``### END SOLUTION``, taken out of the student version) followed by a locked nbgrader test cell
    that asserts what the learner should find."""
    name, nb, _ = notebook
    heading = [i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and c.source.startswith("## Exercises")]
    if not heading:
        return
    exercises = re.findall(r"^(\d+)\. \*\*", nb.cells[heading[0]].source, flags=re.MULTILINE)
    code = [c for c in nb.cells[heading[0] + 1 :] if c.cell_type == "code"]
    assert exercises == [str(n) for n in range(1, len(exercises) + 1)] and len(code) == 2 * len(exercises), name
    ids = []
    for number, answer, check in zip(exercises, code[::2], code[1::2]):
        grading = answer.metadata.get("nbgrader", {}), check.metadata.get("nbgrader", {})
        assert answer.source.startswith(f"# {number}. ") and grading[0].get("solution") and not grading[0].get("grade")
        assert answer.source.count("### BEGIN SOLUTION") == answer.source.count("### END SOLUTION") > 0, name
        asserts = [node for node in ast.walk(ast.parse(check.source)) if isinstance(node, ast.Assert)]
        assert check.source.startswith(f"# check {number}") and asserts, f"{name} exercise {number}"
        assert grading[1].get("grade") and grading[1].get("locked") and grading[1].get("points", 0) > 0
        ids += [grading[0]["grade_id"], grading[1]["grade_id"]]
    assert len(set(ids)) == len(ids)  # nbgrader needs a grade id of its own for every cell


def test_code_cells_are_plain_python(notebook):
    """No cell magics or shell escapes: each cell parses as Python (IPython helpers go through get_ipython()); a cell
    may ``await`` at its top level, as IPython allows."""
    name, nb, _ = notebook
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            try:
                compile(cell.source, f"{name} cell {index}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
                        dont_inherit=True)
            except SyntaxError as exc:  # pragma: no cover - the message names the cell
                pytest.fail(f"{name} cell {index}: {exc}")
