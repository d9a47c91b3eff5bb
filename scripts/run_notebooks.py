"""Execute the notebooks in place, so that their stored outputs come from the current code.

    python scripts/run_notebooks.py                  # every notebook, the small setting
    python scripts/run_notebooks.py gmm gp_attention # some of them
    python scripts/run_notebooks.py --full           # at full size (minutes to an hour)

The small setting is the one the notebooks are committed at and the test suite runs
(``PYRO_ATTENTION_NB_STEPS=40``, ``PYRO_ATTENTION_NB_NUTS=30``); their result files go to a
temporary folder. Each notebook runs in a fresh ``python3`` kernel of this interpreter from the
repository root with one torch thread; it is rewritten only when every cell ran without error
(atomically), and the cells' timing metadata is dropped to keep diffs small.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without an install
    sys.path.insert(0, str(REPO))

from pyro_attention._io import atomic_path  # noqa: E402

SMALL = {"PYRO_ATTENTION_NB_STEPS": "40", "PYRO_ATTENTION_NB_NUTS": "30"}


def _kernel(folder: Path) -> str:
    """A ``python3`` kernel spec running this interpreter, first on ``JUPYTER_PATH``."""
    from ipykernel.kernelspec import write_kernel_spec

    write_kernel_spec(folder / "kernels" / "python3")
    os.environ["JUPYTER_PATH"] = os.pathsep.join(
        [str(folder), *filter(None, [os.environ.get("JUPYTER_PATH")])]
    )
    return "python3"


def run(path: Path, *, full: bool, timeout: int, kernel: str, out: Path) -> float:
    """Execute ``path`` and rewrite it with the new outputs; the seconds it took."""
    import nbclient
    import nbformat

    for name, value in SMALL.items():
        if full:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    os.environ["PYRO_ATTENTION_NB_OUT"] = str(out / path.stem)
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=timeout, kernel_name=kernel, resources={"metadata": {"path": str(REPO)}}
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError on the first failing cell; the file is kept
    for cell in notebook.cells:
        cell.metadata.pop("execution", None)
    with atomic_path(path) as tmp:
        nbformat.write(notebook, tmp)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebook names (default: all)")
    parser.add_argument("--full", action="store_true", help="run at full size")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell (1800)")
    args = parser.parse_args(argv)
    available = {p.stem: p for p in sorted((REPO / "notebooks").glob("*.ipynb"))}
    unknown = sorted(set(args.names) - set(available))
    if unknown:
        parser.error(f"unknown notebook(s) {unknown}; known: {', '.join(available)}")
    if args.timeout < 1:
        parser.error(f"--timeout must be an integer >= 1, got {args.timeout}")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        kernel = _kernel(Path(tmp) / "jupyter")
        for name in args.names or list(available):
            seconds = run(
                available[name], full=args.full, timeout=args.timeout, kernel=kernel, out=Path(tmp)
            )
            print(f"{available[name].relative_to(REPO)}: executed in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
