"""Every notebook in ``notebooks/`` runs top to bottom.

By default each notebook runs in a small setting (few optimisation steps, a tiny NUTS run, outputs
in pytest's ``tmp_path``); ``-m slow`` runs them at full size. The notebooks are executed in
memory: the files in ``notebooks/`` are never rewritten. The kernel is a ``python3`` kernel spec
written for this interpreter (``sys.executable``) and put first on ``JUPYTER_PATH``, so a
``python3`` spec of another environment can never run the notebooks without this package.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from conftest import require

# dev-extra dependencies: a missing one fails the collection (see conftest.require)
nbformat = require("nbformat")
nbclient = require("nbclient")
require("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
KERNEL = "python3"

#: the small setting; PYRO_ATTENTION_NB_OUT is set per test to a folder under tmp_path
SMALL = {
    "PYRO_ATTENTION_NB_STEPS": "40",
    # NUTS draws per chain (and warm-up steps): with fewer than ~30, PSIS-LOO on the chains
    # can fail ("All tail values are the same")
    "PYRO_ATTENTION_NB_NUTS": "30",
}


def _python3_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Write a ``python3`` kernel spec that runs this interpreter; return its name."""
    from ipykernel.kernelspec import write_kernel_spec
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    jupyter_dir = tmp_path / "jupyter"
    write_kernel_spec(jupyter_dir / "kernels" / KERNEL)
    paths = [str(jupyter_dir), *filter(None, [os.environ.get("JUPYTER_PATH")])]
    monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join(paths))
    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL)
    except NoSuchKernel:
        pytest.fail(
            f"no {KERNEL!r} Jupyter kernel spec found even after writing one to {jupyter_dir}; "
            "check that ipykernel is installed in this environment (pip install -e '.[dev]')",
            pytrace=False,
        )
    if spec.argv[0] != sys.executable:
        pytest.fail(
            f"the {KERNEL!r} kernel spec runs {spec.argv[0]}, not this interpreter "
            f"{sys.executable}; unset JUPYTER_PATH entries that define another {KERNEL!r}",
            pytrace=False,
        )
    return KERNEL


def _execute(
    path: Path,
    env: dict[str, str],
    timeout: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Run ``path`` in a fresh kernel from the repository root; fail on the first error."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PYRO_ATTENTION_NB_OUT", str(tmp_path / "out"))
    if "OMP_NUM_THREADS" not in os.environ:
        # on a loaded 2-core machine, torch's two intra-op threads made the small steps of
        # these models up to 30x slower than one thread
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
    kernel = _python3_kernel(tmp_path, monkeypatch)
    stored = path.read_bytes()
    notebook = nbformat.reads(stored.decode("utf-8"), as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=timeout,
        kernel_name=kernel,
        resources={"metadata": {"path": str(ROOT)}},
    )
    failure = None
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as error:
        failure = str(error)
    if failure is not None:
        pytest.fail(f"{path.name}: a cell raised\n{failure}", pytrace=False)
    errors = [
        output
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert not errors, f"{path.name}: cells reported errors: {errors}"
    assert path.read_bytes() == stored, f"{path.name} was rewritten by the test"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_stored_notebook_is_executed(path: Path) -> None:
    """The committed notebook carries its outputs, without errors."""
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code" and cell.source.strip()]
    assert code, f"{path.name} has no code cells"
    unexecuted = [i for i, cell in enumerate(code) if cell.get("execution_count") is None]
    assert not unexecuted, (
        f"{path.name}: code cells {unexecuted} are not executed; commit the notebook executed "
        "(see notebooks/README.md)"
    )
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{path.name} was stored with error outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs_small(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _execute(path, SMALL, 600, tmp_path, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs_full_size(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in SMALL:
        monkeypatch.delenv(name, raising=False)
    _execute(path, {}, 1800, tmp_path, monkeypatch)
