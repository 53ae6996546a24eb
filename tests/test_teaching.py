"""The teacher's kit: student versions of the notebooks (nbgrader), and nbgrader's autograder on them.

``scripts/student_notebooks.py`` generates the student versions with nbgrader's ``generate_assignment``. They keep
every cell but the answers of the exercises, and run up to the exercises; the autograder gives the reference
answers full marks and takes the points of a wrong answer.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
SCRIPT = ROOT / "scripts" / "student_notebooks.py"

pytest.importorskip("nbgrader", reason="nbgrader (the teach extra) is not installed")


def _kernel_env(**overrides) -> dict:
    """The notebooks' settings for the kernels that nbgrader starts (its kernels get this process's environment)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", STYLEGALLERY_MODEL="tiny", STYLEGALLERY_DATA=str(ROOT / "data"),
               STYLEGALLERY_SIZE="256", STYLEGALLERY_STEPS="30", PATH=os.pathsep.join(
                   [str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    env.update(overrides)
    return env


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """The student versions of every notebook with exercises, and the course folder nbgrader made for them."""
    out = tmp_path_factory.mktemp("student")
    subprocess.run([sys.executable, str(SCRIPT), str(out)], check=True, env=_kernel_env(), capture_output=True)
    return out


def _exercise_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code" and "nbgrader" in c.metadata]


def test_the_student_versions_keep_everything_but_the_answers(student):
    made = sorted(p.name for p in student.glob("*.ipynb"))
    assert made == ["02_regions.ipynb", "03_matching.ipynb", "04_style_loss.ipynb", "07_interpret.ipynb"]
    for name in made:
        teacher, pupil = (nbformat.read(folder / name, as_version=4) for folder in (NOTEBOOKS, student))
        assert [c.cell_type for c in teacher.cells] == [c.cell_type for c in pupil.cells], name
        for ours, theirs in zip(teacher.cells, pupil.cells):
            grading = ours.metadata.get("nbgrader", {})
            if grading.get("solution"):  # the answer goes, the rest of the cell stays
                assert "BEGIN SOLUTION" not in theirs.source and "raise NotImplementedError()" in theirs.source
                kept = [line for line in ours.source.splitlines() if line.startswith("print(")]
                assert all(line in theirs.source for line in kept), name
            else:  # the text, the lessons' code and the checks, unchanged
                assert theirs.source == ours.source, name
            if grading.get("grade"):
                assert theirs.metadata["nbgrader"]["locked"] and theirs.metadata.get("editable") is False
        assert not any(c.get("outputs") for c in pupil.cells if c.cell_type == "code")


def test_a_student_version_runs_up_to_the_exercises(student):
    """Run with the tiny models: every cell of the lesson runs; in the exercises only the empty answers (and the
    checks that need them) fail."""
    from nbclient import NotebookClient

    nb = nbformat.read(student / "07_interpret.ipynb", as_version=4)
    env = _kernel_env(STYLEGALLERY_SIZE="128", STYLEGALLERY_STEPS="4")
    client = NotebookClient(nb, timeout=600, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        client.execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    errors = {i: [o.ename for o in c.outputs if o.output_type == "error"] for i, c in enumerate(nb.cells)
              if c.cell_type == "code"}
    exercises = {i for i, c in enumerate(nb.cells) if "nbgrader" in c.metadata}
    assert not any(names for i, names in errors.items() if i not in exercises)  # the lesson runs
    answers = [i for i in exercises if nb.cells[i].metadata["nbgrader"]["solution"]]
    assert all(errors[i] == ["NotImplementedError"] for i in answers)  # the answers are for the student to write


def test_the_autograder_passes_the_reference_answers_and_fails_a_wrong_one(student, tmp_path):
    course = tmp_path / "course"
    shutil.copytree(student / "course", course)
    reference = nbformat.read(NOTEBOOKS / "02_regions.ipynb", as_version=4)
    wrong = nbformat.read(NOTEBOOKS / "02_regions.ipynb", as_version=4)
    answer = next(c for c in wrong.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "regions-ex2")
    answer.source = answer.source.replace("smallest = min(", "smallest = 0.0 * min(")  # a wrong threshold
    for student_id, nb in (("alice", reference), ("bob", wrong)):
        folder = course / "submitted" / student_id / "stylegallery"
        folder.mkdir(parents=True)
        nbformat.write(nb, folder / "02_regions.ipynb")
    done = subprocess.run([sys.executable, "-m", "nbgrader", "autograde", "stylegallery", "--force",
                           "--Execute.timeout=600", f"--CourseDirectory.root={course}"], cwd=course, env=_kernel_env(), capture_output=True,
                          text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        scores = {s: gradebook.find_submission_notebook("02_regions", "stylegallery", s) for s in ("alice", "bob")}
        marks = {s: {g.name: g.score for g in nb.grades} for s, nb in scores.items()}
        maximum = scores["alice"].max_score
    assert maximum == 5 and sum(marks["alice"].values()) == 5, marks
    assert marks["bob"]["regions-ex2-check"] == 0 and sum(marks["bob"].values()) == 4, marks
