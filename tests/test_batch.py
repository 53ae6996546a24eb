"""`stylegallery batch`: a grid of jobs, resume after a stop or a kill, two processes, bad rows, bad plans."""

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stylegallery.tools.batch import plan_from_folders, read_plan
from stylegallery.tools.cli import main
from stylegallery.tools.gallery import Gallery

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """3 content images and 2 references (64 px) in two folders."""
    from synthetic import planted

    root = tmp_path_factory.mktemp("images")
    (root / "contents").mkdir()
    (root / "styles").mkdir()
    for i, (layout, colours) in enumerate((("bands", ("red", "green", "blue")), ("rows", ("blue", "red", "green")),
                                           ("bands", ("orange", "cyan", "purple")))):
        planted(64, layout, colours, seed=i)[0].save(root / "contents" / f"c{i}.png")
    planted(64, "rows", ("yellow", "green", "red"), seed=5)[0].save(root / "styles" / "s0.png")
    planted(64, "bands", ("white", "purple", "blue"), seed=6)[0].save(root / "styles" / "s1.png")
    return root


def _options(model_dir):
    return ["--model", str(model_dir / "sd"), "--semantic-model", str(model_dir / "dinov2"), "--depth-model",
            str(model_dir / "depth"), "--size", "64", "--steps", "2", "--inversion-steps", "2", "--max-clusters", "3",
            "--quiet"]


def _grid(images, out, model_dir):
    return ["batch", "--contents", str(images / "contents"), "--styles", str(images / "styles"), "-o", str(out),
            *_options(model_dir)]


def _summary(out):
    with open(out / "summary.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _reports(out):
    return {p.parent.name: json.loads(p.read_text()) for p in (out / "jobs").glob("*/report.json")}


def _no_temporary_files(out):
    return not [p for p in out.rglob("*.tmp")]


def test_a_grid_completes_and_a_second_run_does_no_work(images, model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_grid(images, out, model_dir)) == 0
    rows = _summary(out)
    assert len(rows) == 6 and {r["status"] for r in rows} == {"done"}
    assert "6 done, 0 already complete, 0 failed" in capsys.readouterr().out
    for row in rows:
        folder = out / "jobs" / row["job"]
        assert {p.name for p in folder.iterdir()} == {"result.png", "regions_content.png", "regions_style1.png",
                                                     "report.json"}
        assert float(row["loss"]) > 0 and float(row["seconds_stylize"]) > 0 and row["error"] == ""
    # every image inverted once, by the job that first needed it: 5 inversions, not 6 x 2
    assert sum(int(r["inversions"]) for r in rows) == 5
    assert (out / "gallery.html").is_file() and _no_temporary_files(out)

    first = {name: report["batch"]["run_id"] for name, report in _reports(out).items()}
    stamps = {p: p.stat().st_mtime_ns for p in (out / "jobs").rglob("*.png")}
    assert main(_grid(images, out, model_dir)) == 0
    assert "0 done, 6 already complete" in capsys.readouterr().out
    assert {r["status"] for r in _summary(out)} == {"skipped"}
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing written again
    assert {n: r["batch"]["run_id"] for n, r in _reports(out).items()} == first

    # one result deleted, another damaged (a half-written file): those two run again, the rest are kept
    gone, damaged = sorted(first)[:2]
    (out / "jobs" / gone / "result.png").unlink()
    path = out / "jobs" / damaged / "result.png"
    path.write_bytes(path.read_bytes()[:100])
    assert main(_grid(images, out, model_dir)) == 0
    status = {r["job"]: r["status"] for r in _summary(out)}
    assert status[gone] == status[damaged] == "done"
    assert [s for n, s in status.items() if n not in (gone, damaged)] == ["skipped"] * 4
    assert Image.open(path).size == (64, 64)


# Runs the command line in a child process that stops itself at a chosen point, the same point every time (never by
# a timer): ``kill`` is SIGKILL right after the first file of the second job is written (the job is left incomplete);
# ``interrupt`` is a KeyboardInterrupt (Ctrl-C) as the second job starts.
_STOPPING = """
import os, signal, sys
from stylegallery import StyleGallery
from stylegallery.tools import batch
from stylegallery.tools.cli import main

how, calls, writes = sys.argv[1], [], []
call, write = StyleGallery.__call__, batch.write_atomic

def counted_call(self, *args, **kwargs):
    calls.append(1)
    if how == "interrupt" and len(calls) == 2:
        raise KeyboardInterrupt
    return call(self, *args, **kwargs)

def counted_write(path, *args, **kwargs):
    out = write(path, *args, **kwargs)
    if how == "kill" and len(calls) == 2 and not writes:
        writes.append(path)
        os.kill(os.getpid(), signal.SIGKILL)
    return out

StyleGallery.__call__, batch.write_atomic = counted_call, counted_write
sys.exit(main(sys.argv[2:]))
"""


def test_a_killed_run_resumes_with_every_job_done_once(images, model_dir, tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    killed = subprocess.run([sys.executable, "-c", _STOPPING, "kill", *_grid(images, out, model_dir)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert len(_reports(out)) == 1 and len(list((out / "jobs").iterdir())) == 2  # the second job left incomplete
    interrupted = subprocess.run([sys.executable, "-c", _STOPPING, "interrupt", *_grid(images, out, model_dir)],
                                 env=env, capture_output=True, text=True, timeout=300)
    assert interrupted.returncode == 130 and "interrupted" in interrupted.stderr, interrupted.stderr
    before = {name: report["batch"]["run_id"] for name, report in _reports(out).items()}
    assert len(before) == 2, before  # the first run's job, and the incomplete one finished by the second run
    assert main(_grid(images, out, model_dir)) == 0
    after = _reports(out)
    assert len(after) == 6 and _no_temporary_files(out)
    assert {n: after[n]["batch"]["run_id"] for n in before} == before  # finished jobs were not done again
    rows = _summary(out)
    assert sorted(r["status"] for r in rows) == ["done"] * 4 + ["skipped"] * 2


def test_two_processes_split_the_jobs_and_match_one_process(images, model_dir, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(_grid(images, one, model_dir)) == 0
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "stylegallery", *_grid(images, two, model_dir), "--processes", "2"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = _reports(two)
    assert len(reports) == 6 and {r["batch"]["processes"] for r in reports.values()} == {2}
    by_process = [r["batch"]["process"] for r in reports.values()]
    assert sorted(by_process) == [0, 0, 0, 1, 1, 1]  # split evenly, each job done by one process
    assert len({r["batch"]["run_id"] for r in reports.values()}) == 1
    assert {r["status"] for r in _summary(two)} == {"done"}
    assert sorted(reports) == sorted(_reports(one))  # the same job names
    for name in reports:
        a = np.asarray(Image.open(one / "jobs" / name / "result.png"), dtype=np.int16)
        b = np.asarray(Image.open(two / "jobs" / name / "result.png"), dtype=np.int16)
        assert np.abs(a - b).max() <= 1, name
    assert sum(r["batch"]["inversions"] for r in reports.values()) <= 10  # the cache is shared on disk


def test_bad_rows_fail_alone_and_the_exit_status_counts_them(images, model_dir, tmp_path, capsys):
    (tmp_path / "broken.png").write_bytes(b"not an image at all")
    plan = tmp_path / "plan.csv"
    plan.write_text(
        "content,styles,c_ratio,colour\n"
        f"{images / 'contents' / 'c0.png'},{images / 'styles' / 's0.png'},,\n"
        f"missing.png,{images / 'styles' / 's0.png'},,\n"
        f"broken.png,{images / 'styles' / 's1.png'},,\n"
        f"{images / 'contents' / 'c1.png'},{images / 'styles' / 's0.png'};{images / 'styles' / 's1.png'},0.5,red\n"
        f"{images / 'contents' / 'c2.png'},{images / 'styles' / 's1.png'},0.4,\n"
    )
    out = tmp_path / "out"
    assert main(["batch", str(plan), "-o", str(out), *_options(model_dir)]) == 103
    rows = _summary(out)
    assert [r["status"] for r in rows] == ["done", "failed", "failed", "failed", "done"]
    assert "image file not found" in rows[1]["error"] and "missing.png" in rows[1]["error"]
    assert "cannot read" in rows[2]["error"] and "broken.png" in rows[2]["error"]
    assert "unknown setting 'colour'" in rows[3]["error"]
    assert json.loads(rows[4]["settings"])["c_ratio"] == 0.4  # a row's setting, typed
    assert _reports(out)[rows[4]["job"]]["settings"]["c_ratio"] == 0.4
    assert "2 done, 0 already complete, 3 failed" in capsys.readouterr().out
    page = (out / "gallery.html").read_text()
    assert page.count("failed: ") == 3 and "unknown setting" in page


@pytest.mark.parametrize("name, text, message", [
    ("plan.jsonl", '{"content": "a.png", "styles": ["b.png"]}\n{"content": "a.png", "styles": \n', "line 2 is not JSON"),
    ("plan.jsonl", '["a.png", "b.png"]\n', "must be a JSON object"),
    ("plan.csv", "content,size\na.png,64\n", "columns content and styles"),
    ("plan.csv", "content,styles\n,b.png\n", "row 1 of the plan has no content"),
    ("plan.csv", "content,styles\n", "has no jobs"),
    ("plan.txt", "content,styles\na.png,b.png\n", ".csv or .jsonl"),
])
def test_a_malformed_plan_is_one_clear_error_before_any_work(model_dir, tmp_path, capsys, name, text, message):
    plan = tmp_path / name
    plan.write_text(text)
    out = tmp_path / "out"
    assert main(["batch", str(plan), "-o", str(out), *_options(model_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("stylegallery: error:"), err
    assert not out.exists()


def test_impossible_options_are_clear_errors(images, model_dir, tmp_path, capsys):
    plan = tmp_path / "plan.csv"
    plan.write_text("content,styles\na.png,b.png\n")
    cases = [
        (["batch", str(plan), "--contents", str(images / "contents"), "--styles", str(images / "styles")], "not both"),
        (["batch"], "give a PLAN file"),
        (["batch", "--contents", str(images / "contents"), "--styles", str(tmp_path / "nowhere")], "folder not found"),
        (["batch", str(plan), "--size", "60"], "multiple of 64"),
    ]
    for argv, message in cases:
        assert main([*argv, "-o", str(tmp_path / "out"), *_options(model_dir)[:6]]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_plans_from_folders_and_jsonl(images, tmp_path):
    jobs = plan_from_folders(images / "contents", images / "styles", "zip")
    assert [(Path(j.content).name, [Path(s).name for s in j.styles]) for j in jobs] == [("c0.png", ["s0.png"]),
                                                                                         ("c1.png", ["s1.png"])]
    jobs = plan_from_folders(images / "contents", images / "styles", "all", references_per_job=2)
    assert len(jobs) == 3 and all(len(j.styles) == 2 for j in jobs)
    plan = tmp_path / "plan.jsonl"
    plan.write_text('{"content": "c.png", "styles": ["a.png", "b.png"], "steps": 3, "region_attention": "masked"}\n')
    (job,) = read_plan(plan)
    assert job.content == str(tmp_path / "c.png") and job.styles == [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    assert job.settings == {"steps": 3, "region_attention": "masked"} and job.problem is None


def test_the_gallery_displays_in_a_notebook(images, model_dir, tmp_path):
    out = tmp_path / "out"
    assert main(["batch", "--contents", str(images / "contents"), "--styles", str(images / "styles"), "--pairs", "zip",
                 "-o", str(out), *_options(model_dir)]) == 0
    fragment = Gallery(out)._repr_html_()
    assert fragment.startswith('<div class="sg-gal">') and fragment.count('class="sg-gal-image"') == 2 * 3
    assert "<body>" not in fragment and "data:image/jpeg;base64," in fragment


def test_without_the_shared_cache_every_job_inverts_its_images(images, model_dir, tmp_path):
    out = tmp_path / "out"
    assert main(["batch", "--contents", str(images / "contents"), "--styles", str(images / "styles"), "--pairs", "zip",
                 "-o", str(out), "--no-shared-cache", *_options(model_dir)]) == 0
    assert [int(r["inversions"]) for r in _summary(out)] == [2, 2]


def test_a_model_that_cannot_be_loaded_stops_the_command(images, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["batch", "--contents", str(images / "contents"), "--styles", str(images / "styles"), "-o", str(out),
                 "--model", str(tmp_path / "no-model"), "--no-semantic", "--no-depth", "--quiet"])
    assert code == 2 and "stylegallery: error:" in capsys.readouterr().err
    assert not list((out / "jobs").glob("*/error.json"))  # not six copies of the same failure
