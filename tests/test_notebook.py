"""notebooks/compare_runs.ipynb: executed with nbclient against the session's tiny run.

The notebook compares two pipeline runs: the tiny run and the same command again, which
is a cache hit for every stage (seconds, where a second evaluation would cost minutes on
two cores). The second run therefore shares the first one's evaluation, which the
notebook must find through the evaluate stage's key and say; a comparison of two distinct
evaluations goes through the same code with other numbers (docs/comparing-runs.md has
the screenshot of one).
"""

from __future__ import annotations

import json
import sys
import urllib.parse
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

NOTEBOOK = REPO_ROOT / "notebooks" / "compare_runs.ipynb"
KERNEL = "rankbrew-test-python"


def _nbformat():
    return pytest.importorskip("nbformat", reason="nbformat is missing: install the dev extras "
                                                   "(`.venv/bin/pip install -e '.[dev]'`)")


def test_committed_notebook_has_no_outputs():
    """Outputs in git are stale numbers from someone's store and noisy diffs."""
    nbformat = _nbformat()
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
    assert code and not dirty, (f"cells {dirty} of {NOTEBOOK.name} hold outputs: clear them (JupyterLab: "
                                "Edit > Clear Outputs of All Cells) before committing")
    params = code[0]
    assert "parameters" in params.metadata.get("tags", []), "the first code cell must be the parameters cell"
    for var in ("RANKBREW_TRACKING_URI", "RANKBREW_EXPERIMENT", "RANKBREW_RUN_IDS"):
        assert var in params.source


def _kernel(tmp: Path, monkeypatch) -> str:
    """A kernelspec running this interpreter, found only through JUPYTER_PATH: nothing is
    registered globally, and a user's own ``python3`` kernel cannot shadow it."""
    kernelspec = pytest.importorskip("ipykernel.kernelspec", reason="ipykernel is missing: install the dev "
                                                                    "extras (`.venv/bin/pip install -e '.[dev]'`)")
    kernelspec.install(kernel_name=KERNEL, prefix=str(tmp))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp / "share" / "jupyter"))
    from jupyter_client.kernelspec import KernelSpecManager

    argv = KernelSpecManager().get_kernel_spec(KERNEL).argv
    assert Path(argv[0]).resolve() == Path(sys.executable).resolve(), argv
    return KERNEL


def _text(output) -> str:
    data = output.get("data", {})
    return output.get("text", "") + data.get("text/html", "") + data.get("text/plain", "") + \
        data.get("text/markdown", "")


@pytest.mark.slow
@pytest.mark.timeout(1800)  # includes the session's tiny run when this test is the first to need it
def test_notebook_compares_two_runs(tiny_run, tmp_path, monkeypatch):
    nbformat = _nbformat()
    nbclient = pytest.importorskip("nbclient", reason="nbclient is missing: install the dev extras "
                                                       "(`.venv/bin/pip install -e '.[dev]'`)")
    from tests.tiny_run import run

    cfg, first = tiny_run
    second = run(cfg)
    assert all(r.cached for r in second.results.values())

    monkeypatch.setenv("RANKBREW_TRACKING_URI", first.tracking_uri)
    monkeypatch.setenv("RANKBREW_EXPERIMENT", cfg.run.name)
    monkeypatch.setenv("RANKBREW_RUN_IDS", f"{first.parent_run_id},{second.parent_run_id}")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name=_kernel(tmp_path / "kernel", monkeypatch), timeout=300,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on an error

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, [f"{e.ename}: {e.evalue}" for e in errors]
    text = "\n".join(_text(o) for o in outputs)
    a, b = f"A:{first.parent_run_id[:8]}", f"B:{second.parent_run_id[:8]}"
    assert first.parent_run_id in text and second.parent_run_id in text, "the runs table lacks a run id"
    assert "Both runs share one evaluation" in text
    html = [o.data["text/html"] for o in outputs if "<table" in o.get("data", {}).get("text/html", "")]
    # the two runs, the means, per task, cold start, calibration, chain: each names both runs
    tables = [t for t in html if a in t and b in t]
    assert len(tables) >= 6, f"{len(tables)} of {len(html)} tables name both runs ({a}, {b})"
    per_task = next(t for t in tables if "vs popularity" in t)
    for row in ("mean over trained tasks", "mean over held-out tasks", "teacher", "popularity"):
        assert row in per_task
    chain = next(t for t in tables if "lift kept" in t)
    assert "student_small" in chain and "quantized" in chain
    calibration = next(t for t in tables if "positive rate" in t)
    assert "teacher" in calibration and "ECE" in calibration
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(figures) == 3, "cold start, calibration and chain figures"
    # the compare page link names both evaluate stage runs
    link = next(line for line in text.splitlines() if "#/compare-runs?" in line)
    assert len(json.loads(urllib.parse.parse_qs(link.split("?", 1)[1])["runs"][0])) == 2
