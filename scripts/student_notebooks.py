"""Write the student versions of the tutorial notebooks with nbgrader: the answers of the exercises taken out, the
check cells locked, outputs cleared.

    python scripts/student_notebooks.py OUTDIR [NOTEBOOK ...]     # default: every notebook with exercises

It runs nbgrader's ``generate_assignment`` on a course folder of its own (in OUTDIR/course, kept: its gradebook is
what ``nbgrader autograde`` grades the submissions against; see notebooks/TEACHING.md) and copies the student
versions to OUTDIR. Needs the ``teach`` extra (``pip install 'stylegallery[teach]'``, or the dev install).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
ASSIGNMENT = "stylegallery"


def with_exercises() -> list[Path]:
    """The tutorial notebooks that have exercises (cells marked as nbgrader solutions)."""
    return sorted(p for p in NOTEBOOKS.glob("[0-9]*.ipynb") if '"solution": true' in p.read_text(encoding="utf-8"))


def nbgrader(course: Path, *arguments: str) -> None:
    """Run an nbgrader command on ``course``; its output goes to ours, and a failure stops with its status."""
    command = [sys.executable, "-m", "nbgrader", *arguments, f"--CourseDirectory.root={course}"]
    # nbgrader runs alembic (its database migrations) from the PATH: the one installed beside this Python
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    done = subprocess.run(command, cwd=course, env=dict(os.environ, PATH=path))
    if done.returncode:
        raise SystemExit(f"nbgrader {arguments[0]} failed (exit status {done.returncode})")


def generate(outdir: Path, notebooks: list[Path]) -> list[Path]:
    """Write the student versions of ``notebooks`` to ``outdir`` (and the course folder to ``outdir/course``)."""
    course = outdir / "course"
    source = course / "source" / ASSIGNMENT
    if source.exists():
        shutil.rmtree(source)
    source.mkdir(parents=True)
    for notebook in notebooks:
        shutil.copy2(notebook, source / notebook.name)
    nbgrader(course, "generate_assignment", ASSIGNMENT, "--force")
    written = []
    for notebook in notebooks:
        target = outdir / notebook.name
        shutil.copy2(course / "release" / ASSIGNMENT / notebook.name, target)
        written.append(target)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("notebooks", nargs="*", type=Path, help="notebooks (default: every one with exercises)")
    args = parser.parse_args()
    notebooks = [p.resolve() for p in args.notebooks] or with_exercises()
    args.outdir.mkdir(parents=True, exist_ok=True)
    for path in generate(args.outdir.resolve(), notebooks):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
