"""Every entry point, run as a new user would on bad inputs: one line, no stack trace.

Each case runs as ``python -m zoomfeat.{entry} ...`` in a process of its own (all cases in one fixture, one
after the other, forked from one process that imported torch, diffusers and Hydra once:
``tests.processes.run_entries``) and checks that stderr has no ``Traceback``, exactly one ``zoomfeat {entry}: error:``
line, that this line says what is wrong (``expect``), and the exit status (2: a user error stopping
the run; 1: extract/prepare slides that failed while the others went on).

The table of these cases and what the user sees is in docs/troubleshooting.md (regenerated in place
by ``ZOOMFEAT_ENTRY_TABLE=docs/troubleshooting.md python -m pytest -q tests/test_entry_errors.py``).
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.processes import run_entries

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Case:
    entry: str
    name: str
    args: tuple[str, ...]
    expect: tuple[str, ...]  # substrings of the error line
    status: tuple[int, ...] = (2,)
    owner: str = ""  # a known failure in a file this suite's owner does not own: xfail with the reason
    extra: dict = field(default_factory=dict, compare=False, hash=False)


def _cases() -> list[Case]:
    # {t}: the test's scratch directory (filled in by the fixture)
    ex = [
        Case("extract", "missing slide", ("{t}/nope.svs", "out_dir={t}/o"), ("nope.svs", "does not exist")),
        Case("extract", "directory with no slides", ("{t}/empty", "out_dir={t}/o"),
             ("no slide files in directory", "empty", ".svs", "manifest CSV")),
        Case("extract", "not a slide file", ("{t}/notes.svs", "model=tiny", "encoder=tiny", "out_dir={t}/o",
                                             "progress=false"), ("notes.svs", "not a slide openslide can open"), (1,)),
        Case("extract", "slide without resolution", ("{t}/nompp.tif", "model=tiny", "encoder=tiny",
                                                     "out_dir={t}/o", "progress=false"),
             ("nompp.tif", "no resolution", "`mpp=0.25` on the command line"), (1,)),
        Case("extract", "unknown key", ("demo=true", "out_dir={t}/o", "features.timestp=3"),
             ("unknown setting 'features.timestp'", "known keys under features: timestep")),
        Case("extract", "bad value type", ("demo=true", "out_dir={t}/o", "batch_size=abc"), ("batch_size", "abc")),
        Case("extract", "unknown group option", ("demo=true", "out_dir={t}/o", "model=nonexistent"),
             ("model/nonexistent", "tiny, zoomldm_brca")),
        Case("extract", "out_dir is a file", ("demo=true", "out_dir={t}/afile"), ("afile", "is a file")),
        Case("extract", "out_dir cannot be created", ("demo=true", "out_dir=/proc/zoomfeat_out"),
             ("/proc/zoomfeat_out", "cannot create")),
        Case("extract", "missing weights file", ("demo=true", "out_dir={t}/o", "model=zoomldm_brca",
                                                 "model.checkpoint={t}/nope.ckpt"), ("nope.ckpt",)),
        Case("extract", "missing path containing '='", ("{t}/a=b.svs", "out_dir={t}/o"),
             ("a=b.svs", "manifest CSV")),
        Case("extract", "out_dir from an unset variable", ("demo=true", "out_dir=${oc.env:ZOOMFEAT_NO_SUCH_VAR}"),
             ("out_dir", "'ZOOMFEAT_NO_SUCH_VAR' is not set")),
        Case("extract", "a file where Hydra's run record goes", ("demo=true", "out_dir={t}/hydrafile"),
             ("hydrafile/.hydra", "is a file")),
    ]  # fmt: skip
    bench = [
        Case("bench", "missing labels file", ("task=brca", "task.labels={t}/nope.csv", "task.bags={t}/bags",
                                              "out_dir={t}/b"), ("nope.csv",)),
        Case("bench", "missing bags directory", ("task=brca", "task.labels={t}/labels.csv",
                                                 "task.bags={t}/nope_bags", "out_dir={t}/b"), ("nope_bags",)),
        Case("bench", "unknown key", ("task=musk1", "cv.foldz=3", "out_dir={t}/b"), ("cv.foldz",)),
        Case("bench", "bad value type", ("task=musk1", "cv.folds=abc", "out_dir={t}/b"), ("folds", "abc")),
        Case("bench", "out_dir is a file", ("task=musk1", "out_dir={t}/afile"), ("afile", "is a file")),
        Case("bench", "unknown flag", ("task=musk1", "--bogus", "out_dir={t}/b"), ("--bogus", "-m/--multirun")),
    ]  # fmt: skip
    prep = [
        Case("prepare", "missing slide", ("{t}/nope.svs", "out_dir={t}/p"), ("nope.svs",)),
        Case("prepare", "directory with no slides", ("{t}/empty", "out_dir={t}/p", "model=tiny", "encoder=tiny"),
             ("empty",)),
        Case("prepare", "not a slide file", ("{t}/notes.svs", "out_dir={t}/p", "model=tiny", "encoder=tiny",
                                             "progress=false"), ("notes.svs",), (1, 2)),
        Case("prepare", "unknown key", ("{t}/nope.svs", "out_dir={t}/p", "tissue_min=3"), ("tissue_min",)),
        Case("prepare", "bad value type", ("{t}/notes.svs", "out_dir={t}/p", "batch_size=abc"), ("batch_size",)),
        Case("prepare", "out_dir is a file", ("{t}/notes.svs", "out_dir={t}/afile"), ("afile", "is a file")),
        Case("prepare", "missing weights file", ("{t}/nompp.tif", "out_dir={t}/p", "mpp=0.5",
                                                 "model.checkpoint={t}/nope.ckpt",
                                                 "encoder.checkpoint={t}/nope.bin"), ("nope.",)),
    ]  # fmt: skip
    train = [
        Case("train", "missing data directory", ("data={t}/nope_data", "out_dir={t}/tr", "model=tiny"),
             ("nope_data",)),
        Case("train", "empty data directory", ("data={t}/empty", "out_dir={t}/tr", "model=tiny"), ("empty",)),
        Case("train", "unknown key", ("data={t}/empty", "out_dir={t}/tr", "stepz=3"), ("stepz",)),
        Case("train", "bad value type", ("data={t}/empty", "out_dir={t}/tr", "steps=abc"), ("steps", "abc")),
        Case("train", "out_dir is a file", ("data={t}/empty", "out_dir={t}/afile"), ("afile", "is a file")),
    ]  # fmt: skip
    gen = [
        Case("generate", "missing slide", ("{t}/nope.svs", "out_dir={t}/g", "model=tiny", "encoder=tiny",
                                           "allow_random_weights=true"), ("nope.svs",)),
        Case("generate", "not a slide file", ("{t}/notes.svs", "out_dir={t}/g", "model=tiny", "encoder=tiny",
                                              "allow_random_weights=true"), ("notes.svs",)),
        Case("generate", "unknown key", ("{t}/notes.svs", "out_dir={t}/g", "patch.cont=3"), ("patch.cont",)),
        Case("generate", "bad value type", ("{t}/notes.svs", "out_dir={t}/g", "seed=abc"), ("seed", "abc")),
        Case("generate", "out_dir is a file", ("{t}/notes.svs", "out_dir={t}/afile"), ("afile", "is a file")),
        Case("generate", "missing weights file", ("{t}/nompp.tif", "out_dir={t}/g",
                                                  "model.checkpoint={t}/nope.ckpt"), ("nope.ckpt",)),
    ]  # fmt: skip
    model = [
        Case("model", "missing weights file", ("--checkpoint", "{t}/nope.ckpt"), ("nope.ckpt",)),
        Case("model", "unknown config", ("--config", "nonexistent"), ("nonexistent",)),
    ]
    export = [
        Case("export", "missing bag directory", ("{t}/nope_out", "to=clam", "dest={t}/x"), ("nope_out",)),
        Case("export", "directory with no bags", ("{t}/empty", "to=clam", "dest={t}/x"), ("empty",)),
        Case("export", "unknown key", ("{t}/empty", "to=clam", "sett=a"), ("sett",)),
        Case("export", "unknown target", ("{t}/empty", "to=foo"), ("foo",)),
    ]
    heatmap = [
        Case(
            "heatmap",
            "missing bench directory",
            ("{t}/nompp.tif", "bench_dir={t}/nope_bench"),
            ("nope_bench",),
        ),
        Case("heatmap", "unknown key", ("{t}/nompp.tif", "bench_dir={t}/empty", "topk=3"), ("topk",)),
    ]
    return ex + bench + prep + train + gen + model + export + heatmap


CASES = _cases()

#: failures in entry points this suite's owner (issue 11, extraction side) does not own
KNOWN = {}


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    from zoomfeat.slide.synthetic import write_synthetic_slide

    t = tmp_path_factory.mktemp("entry_errors")
    (t / "empty").mkdir()
    (t / "bags").mkdir()
    (t / "afile").write_text("a file, not a directory\n")
    (t / "hydrafile").mkdir()
    (t / "hydrafile" / ".hydra").write_text("a file where Hydra keeps its run record\n")
    (t / "notes.svs").write_text("meeting notes, not a slide\n")
    (t / "labels.csv").write_text("slide_id,case_id,label\ns1,c1,0\ns2,c2,1\n")
    write_synthetic_slide(t / "nompp.tif", width=512, height=512, mpp=0.5, levels=1, vendor="none")
    return t


@pytest.fixture(scope="module")
def results(scratch, request) -> dict[Case, tuple[subprocess.CompletedProcess, float]]:
    """Every selected case (``-k`` works) run once, each in a process of its own, one after the
    other (several cases share an out_dir; each takes a fraction of a second once torch is
    imported)."""
    selected = [
        item.callspec.params["case"]
        for item in request.session.items
        if hasattr(item, "callspec") and isinstance(item.callspec.params.get("case"), Case)
    ] or CASES
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("ZOOMFEAT_DEBUG", None)
    env.pop("HYDRA_FULL_ERROR", None)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    commands = [
        (f"zoomfeat.{case.entry}", [a.replace("{t}", str(scratch)) for a in case.args]) for case in selected
    ]
    out = dict(
        zip(selected, run_entries(commands, cwd=scratch, env=env, parallel=1, timeout=600), strict=True)
    )
    table = os.environ.get("ZOOMFEAT_ENTRY_TABLE")
    if table:  # docs/troubleshooting.md's table, from what the user really sees
        _write_table(Path(table), _table(out, scratch))
    return out


def _write_table(path: Path, rows: str) -> None:
    """Write the table to ``path``, between its ``entry-errors-table`` markers when it has them."""
    start, end = "<!-- entry-errors-table: start -->\n", "<!-- entry-errors-table: end -->"
    text = path.read_text() if path.exists() else ""
    if start in text and end in text:
        rows = text[: text.index(start) + len(start)] + rows + text[text.index(end) :]
    path.write_text(rows)


def _table(out: dict, scratch: Path) -> str:
    rows = ["| Entry point | Bad input | Command (abridged) | Exit | What the user sees (stderr) |",
            "|---|---|---|---|---|"]  # fmt: skip
    for case, (proc, _) in out.items():
        args = " ".join(a.replace("{t}/", "") for a in case.args)
        line = next(
            (ln for ln in proc.stderr.splitlines() if ln.startswith(f"zoomfeat {case.entry}: error:")), ""
        )
        if not line or "Traceback" in proc.stderr:
            tail = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1:] or [""]
            line = ("(stack trace) " if "Traceback" in proc.stderr else "(no error line) ") + tail[0]
        line = line.replace(str(scratch) + "/", "").replace("|", "\\|")
        line = re.sub(r"\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}", "<date_time>", line)  # Hydra's run folder
        rows.append(f"| {case.entry} | {case.name} | `{args}` | {proc.returncode} | {line} |")
    return "\n".join(rows) + "\n"


@pytest.mark.parametrize("case", CASES, ids=[f"{c.entry}: {c.name}" for c in CASES])
def test_bad_input_is_one_line_without_a_trace(case, results, request):
    reason = KNOWN.get((case.entry, case.name))
    if reason:
        request.applymarker(pytest.mark.xfail(reason=reason, strict=False))
    proc, seconds = results[case]
    err = proc.stderr
    shown = f"exit {proc.returncode} after {seconds:.0f} s\n--- stderr:\n{err[-3000:]}\n--- stdout:\n{proc.stdout[-1500:]}"
    assert "Traceback" not in err, shown
    lines = [ln for ln in err.splitlines() if ln.startswith(f"zoomfeat {case.entry}: error: ")]
    assert len(lines) == 1, shown
    for text in case.expect:
        assert text in lines[0], f"{text!r} not in the error line\n{shown}"
    assert proc.returncode in case.status, shown
