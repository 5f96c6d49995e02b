"""benchmarks/gpu_check.py runs end to end on the CPU in --smoke mode (tiny models, tiny sizes), so
the one command meant for an offline GPU machine is known to work before any GPU session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_gpu_check_smoke_on_cpu_prints_one_table_with_every_section(tmp_path):
    out = tmp_path / "rows.json"
    # 2 torch threads (the test machine's cores); the DataLoader worker sets its own 1 thread
    env = {**os.environ, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "TQDM_DISABLE": "1"}
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--smoke", "--device", "cpu", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    rows = json.loads(out.read_text())
    by = {}
    for r in rows:
        by.setdefault(r["section"], []).append(r)
    assert set(by) == {"matmul", "model", "extract", "batch", "agree", "mil", "train"}, sorted(by)
    assert not [r for r in rows if "error" in r]
    # every component in both settings the smoke runs, with FLOPs and a rate
    assert len(by["model"]) == 8 and all(r["gflop_img"] > 0 and r["img_s"] > 0 for r in by["model"])
    assert [r["settings"] for r in by["extract"]] == ["fp32 b=4 workers=1", "fp32 b=8 workers=1"]
    assert all(r["tiles_s"] > 0 and 0 < r["efficiency"] for r in by["extract"])
    # same device, same precision: the agreement check must find no difference at all; across batch
    # sizes UNI is bitwise equal and ZoomLDM within the documented batch tolerance (conftest batch_atol:
    # <= 1e-6 relative measured; 1e-5 bound)
    assert all(r["rel_err"] == 0 for r in by["agree"])
    rel = {r["item"]: r["max_rel_diff"] for r in by["batch"]}
    assert rel["uni_20x"] == 0 and rel["zoomldm_20x"] < 1e-5 and rel["zoomldm_5x"] < 1e-5
    assert all(r["s_per_fold"] > 0 for r in by["mil"]) and by["train"][0]["samples_s"] > 0
    # one table: a header line, a rule, one line per row
    text = proc.stdout
    head = text.index("section  item")
    table = text[head:].splitlines()
    assert table[1].startswith("---") and len([t for t in table[2:] if t.strip()]) == len(rows)
