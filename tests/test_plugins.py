"""Plugins of the command line: ``--plugin`` (a .py file or a dotted module; ``--import`` is its
alias) and the entry points of an installed package register tasks, methods and models that
``--help`` lists and the commands run; ``--seeds`` and sweeps pass plugins on to their runs;
a plugin that cannot be loaded is refused before any work; a broken entry point is skipped with
a warning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from pyro_attention import cli, plugins
from pyro_attention.cli import main
from pyro_attention.data import alignment_tasks
from pyro_attention.infer import registry as method_registry
from pyro_attention.models import ModelOptions, ModelSetup, register_model, unregister_model
from pyro_attention.models import registry as model_registry

#: a tiny alignment comparison
TINY = ["--epochs", "1", "--num-train", "20", "--num-test", "6", "--methods", "exact"]
TINY += ["--hidden", "8", "--embed", "8", "--no-progress"]

TASK = """
import random
from dataclasses import dataclass
from typing import ClassVar

from pyro_attention.data import AlignmentTask, Example, register_task


@register_task
@dataclass(frozen=True, kw_only=True)
class CopyTask(AlignmentTask):
    name: ClassVar[str] = "{name}"
    length: int = 4

    def sample(self, rng: random.Random) -> Example:
        source = tuple(rng.choice("abc") for _ in range(self.length))
        return Example(source, source, tuple(range(self.length)))
"""

METHOD = '''
from pyro_attention.infer.methods import Enum


class {cls}(Enum):
    """enum under another name."""

    name = "{name}"
'''

MODEL = '''
import pyro
import pyro.distributions as dist
import torch

from pyro_attention import alignment, attend
from pyro_attention.models import ModelSetup


def poisson_mixture(counts):
    weights = pyro.sample("weights", dist.Dirichlet(counts.new_ones(2)))
    rates = pyro.sample("rates", dist.Gamma(counts.new_full((2,), 2.0), 0.5).to_event(1))
    with pyro.plate("data", counts.shape[0], dim=-1):
        z = alignment("z", weights.log())
        pyro.sample("obs", dist.Poisson(attend(rates, z, event_dim=0)), obs=counts)


def build(options):
    """A Poisson mixture of made-up counts."""
    generator = torch.Generator().manual_seed(options.seed)
    counts = torch.poisson(torch.full((40,), 3.0), generator=generator)
    counts = counts.to(device=options.device, dtype=options.dtype)
    return ModelSetup(poisson_mixture, counts[:30], counts[30:], dataset="counts",
                      methods={methods!r})
'''


@pytest.fixture
def clean_registries(tmp_path_factory):
    """Leave the registries, the loaded plugin files and ``sys.modules`` (the plugins' modules)
    as they were."""
    saved = (
        dict(alignment_tasks._TASKS),
        dict(method_registry._REGISTRY),
        dict(model_registry._MODELS),
        dict(plugins._FILES),
        set(sys.modules),
        list(sys.path),
    )
    yield
    for registry, before in zip(
        (alignment_tasks._TASKS, method_registry._REGISTRY, model_registry._MODELS, plugins._FILES),
        saved[:4],
        strict=True,
    ):
        registry.clear()
        registry.update(before)
    base = tmp_path_factory.getbasetemp().resolve()
    for name in set(sys.modules) - saved[4]:
        file = getattr(sys.modules[name], "__file__", None)
        if file is not None and Path(file).resolve().is_relative_to(base):
            del sys.modules[name]
    sys.path[:] = saved[5]


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def _rows(out: Path) -> list[dict]:
    return json.loads((out / "summary.json").read_text())["results"]


# ----------------------------------------------------------------------------- --plugin
def test_a_plugin_file_adds_a_task_that_help_lists_and_compare_alignment_runs(
    tmp_path, capsys, clean_registries
):
    plugin = _write(tmp_path / "file_tasks.py", TASK.format(name="file-copy"))
    with pytest.raises(SystemExit) as exit_:
        main(["compare", "alignment", "--plugin", str(plugin), "--help"])
    assert exit_.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "alignment: dates, file-copy, reverse, translation (default dates)" in help_text
    assert "--plugin MODULE_OR_PATH" in help_text and "--import IMPORT" not in help_text
    assert "--import is an alias" in help_text

    out = tmp_path / "run"
    argv = ["compare", "alignment", "--plugin", str(plugin), "--task", "file-copy"]
    assert main([*argv, *TINY, "--out", str(out)]) == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "file-copy" and [r["method"] for r in summary["results"]] == [
        "exact"
    ]
    # the same file again in this process is not executed twice (no clash of registrations)
    assert main([*argv, *TINY, "--out", str(tmp_path / "again")]) == 0


def test_a_dotted_plugin_is_found_from_the_current_folder_and_import_is_an_alias(
    tmp_path, monkeypatch, capsys, clean_registries
):
    _write(tmp_path / "dotted_pkg" / "__init__.py", "")
    _write(tmp_path / "dotted_pkg" / "tasks.py", TASK.format(name="dotted-copy"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    out = tmp_path / "run"
    argv = ["compare", "alignment", "--import", "dotted_pkg.tasks", "--task", "dotted-copy"]
    assert main([*argv, *TINY, "--out", str(out)]) == 0, capsys.readouterr().err
    assert json.loads((out / "summary.json").read_text())["dataset"] == "dotted-copy"


def test_a_plugin_adds_a_method_and_a_model_that_help_lists_and_compare_runs(
    tmp_path, capsys, clean_registries
):
    plugin = _write(
        tmp_path / "file_models.py",
        METHOD.format(cls="FileEnum", name="file-enum")
        + MODEL.format(methods=["file-enum"])
        + "\nfrom pyro_attention.infer import register_method\n"
        "from pyro_attention.models import register_model\n"
        "register_method('file-enum', FileEnum)\n"
        "register_model('file-model', build, help='Poisson mixture (100% made up)')\n",
    )
    with pytest.raises(SystemExit):
        main(["compare", "--plugin", str(plugin), "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "{gmm,alignment,digits,sgpa,file-model}" in help_text
    assert "file-model: Poisson mixture (100% made up)" in help_text
    assert "file-enum" in help_text.split("--methods METHODS")[-1].split("--steps")[0]

    out = tmp_path / "run"
    small = ["--steps", "2", "--num-samples", "5", "--no-progress", "--out", str(out)]
    assert main(["compare", "file-model", "--plugin", str(plugin), *small]) == 0
    assert [row["method"] for row in _rows(out)] == ["file-enum"]  # the setup's default
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "counts"
    argv = ["compare", "file-model", "--plugin", str(plugin), "--methods", "enum,file-enum"]
    assert main([*argv, *small]) == 0
    assert [row["method"] for row in _rows(out)] == ["enum", "file-enum"]
    # the options of other comparisons are refused
    capsys.readouterr()
    assert main([*argv, "--task", "dates", *small]) == 2
    assert "--task does not apply to compare file-model" in capsys.readouterr().err


def test_register_model_refuses_shipped_and_taken_names(clean_registries):
    def build(options: ModelOptions) -> ModelSetup:
        raise AssertionError("not called")

    with pytest.raises(ValueError, match="'gmm' is a shipped comparison"):
        register_model("gmm", build)
    with pytest.raises(ValueError, match="model name"):
        register_model("-x", build)
    register_model("taken", build, help="one")
    register_model("taken", build, help="one")  # the same build again: a module imported twice
    with pytest.raises(ValueError, match="already registered"):
        register_model("taken", lambda options: build(options))
    unregister_model("taken")
    assert "taken" not in model_registry.model_names()
    register_model("bad-build", lambda options: 3)
    options = ModelOptions(torch.device("cpu"), torch.float32)
    with pytest.raises(ValueError, match="returned int, not a ModelSetup"):
        model_registry.get_model("bad-build").setup(options)


@pytest.mark.parametrize(
    ("flag", "name", "content", "cause"),
    [
        ("--plugin", "missing.py", None, "FileNotFoundError: no file"),
        ("--plugin", "raising.py", "raise RuntimeError('boom at import')\n", "RuntimeError: boom"),
        ("--plugin", "no_such_module_here", None, "ModuleNotFoundError"),
        ("--import", "missing.py", None, "(given as --import): FileNotFoundError"),
    ],
)
def test_a_plugin_that_cannot_be_loaded_is_refused_before_any_work(
    tmp_path, capsys, clean_registries, flag, name, content, cause
):
    target = tmp_path / name if name.endswith(".py") else Path(name)
    if content is not None:
        _write(target, content)
    out = tmp_path / "out"
    for argv in (
        ["compare", "alignment", flag, str(target), *TINY],
        ["sla", flag, str(target), "--depths", "1"],
    ):
        assert main([*argv, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: --plugin {target}") and cause in err, err
        assert not out.exists()


def test_seeds_pass_the_plugin_on_to_every_seed(tmp_path, monkeypatch, capsys, clean_registries):
    _write(tmp_path / "seed_tasks.py", TASK.format(name="seed-copy"))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "seeds"
    argv = ["compare", "alignment", "--plugin", "seed_tasks.py", "--task", "seed-copy", *TINY]
    args = cli._parse([*argv, "--seeds", "2", "--workers", "1", "--out", str(out)])
    seed_argv = cli._seed_argv(args)
    assert seed_argv[seed_argv.index("--plugin") + 1] == str(tmp_path / "seed_tasks.py")

    assert main([*argv, "--seeds", "2", "--workers", "1", "--out", str(out)]) == 0, (
        capsys.readouterr().err
    )
    for seed in (0, 1):
        summary = json.loads((out / f"seed-{seed}" / "summary.json").read_text())
        assert summary["dataset"] == "seed-copy"
        command = summary["provenance"]["command"]
        assert f"--plugin {tmp_path / 'seed_tasks.py'}" in command  # absolute for the cell


def test_a_sweep_checks_its_cells_with_their_plugins_and_passes_them_on(
    tmp_path, monkeypatch, capsys, clean_registries
):
    _write(tmp_path / "sweep_tasks.py", TASK.format(name="sweep-copy"))
    _write(
        tmp_path / "sweep_methods.py",
        "\n".join(
            [
                METHOD.format(cls="SweepEnum", name="sweep-enum"),
                "from pyro_attention.infer import register_method",
                "register_method('sweep-enum', SweepEnum)",
            ]
        ),
    )
    spec = _write(
        tmp_path / "spec.toml",
        """
        [[run]]
        command = "compare alignment"
        methods = ["exact"]
        options = { plugin = "sweep_tasks.py", task = "sweep-copy", epochs = 1 }
        [[run]]
        command = "compare gmm"
        methods = ["sweep-enum"]
        """,
    )
    monkeypatch.chdir(tmp_path)
    argv = ["sweep", str(spec), "--plugin", "sweep_methods.py", "--out", "sw", "--dry-run"]
    # without the sweep's plugin, the gmm cell names an unknown method: refused up front
    assert main(argv[:2] + argv[4:]) == 2
    assert "cell gmm/default/sweep-enum/seed-0: unknown inference method 'sweep-enum'" in (
        capsys.readouterr().err
    )
    assert main(argv) == 0, capsys.readouterr().err
    lines = [line for line in capsys.readouterr().out.splitlines() if "pyro-attention" in line]
    assert len(lines) == 2
    for line in lines:
        assert f"--plugin {tmp_path / 'sweep_methods.py'}" in line
    assert f"--plugin {tmp_path / 'sweep_tasks.py'}" in lines[0]


# ----------------------------------------------------------------------------- entry points
ENTRY_POINTS = """
[pyro_attention.tasks]
ep-task = ep_pkg.tasks:CopyTask

[pyro_attention.methods]
ep-enum = ep_pkg.methods:EPEnum

[pyro_attention.models]
ep-model = ep_pkg.models:build
"""
BROKEN_ENTRY_POINTS = """
[pyro_attention.methods]
broken-method = broken_mod:Nothing

[pyro_attention.models]
gmm = ep_pkg.models:build
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A folder with two installed distributions: ep-pkg (a task, a method and a model) and
    broken-pkg (an entry point whose module raises, one that takes a shipped model's name)."""
    site = tmp_path_factory.mktemp("site")
    _write(site / "ep_pkg" / "__init__.py", "")
    _write(site / "ep_pkg" / "tasks.py", TASK.format(name="ep-task"))
    _write(site / "ep_pkg" / "methods.py", METHOD.format(cls="EPEnum", name="ep-enum"))
    _write(site / "ep_pkg" / "models.py", MODEL.format(methods=None))
    _write(site / "broken_mod.py", "raise RuntimeError('broken at import')\n")
    for dist, entry_points in (("ep_pkg", ENTRY_POINTS), ("broken_pkg", BROKEN_ENTRY_POINTS)):
        info = site / f"{dist}-0.1.dist-info"
        name = dist.replace("_", "-")
        _write(info / "METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
        _write(info / "entry_points.txt", entry_points)
    return site


def _run(site: Path, *argv: str, cwd: Path) -> subprocess.CompletedProcess:
    path = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )


def test_entry_points_register_what_help_lists_and_a_broken_one_warns(site, tmp_path):
    done = _run(site, "-m", "pyro_attention.cli", "compare", "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    help_text = " ".join(done.stdout.split())
    assert "{gmm,alignment,digits,sgpa,ep-model}" in help_text
    assert "ep-model: A Poisson mixture of made-up counts." in help_text
    assert "ep-task" in help_text.split("--task TASK")[-1].split("--epochs")[0]
    assert "ep-enum" in help_text.split("--methods METHODS")[-1].split("--steps")[0]
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2, done.stderr
    broken = next(w for w in warnings if "broken-method" in w)
    assert "broken_mod:Nothing" in broken and "broken-pkg 0.1" in broken
    assert "RuntimeError: broken at import" in broken
    assert any("'gmm' is a shipped comparison" in w for w in warnings)


def test_entry_points_run_their_task_method_and_model(site, tmp_path):
    script = textwrap.dedent(
        f"""
        import json, sys
        from pyro_attention.cli import main

        model = ["compare", "ep-model", "--methods", "ep-enum", "--steps", "2",
                 "--num-samples", "5", "--no-progress", "--out", "model"]
        task = ["compare", "alignment", "--task", "ep-task", *{TINY!r}, "--out", "task"]
        print(json.dumps([main(model), main(task)]))
        """
    )
    done = _run(site, "-c", script, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == [0, 0], done.stderr
    # the entry points were loaded once for both runs: one warning per broken entry point
    assert done.stderr.count("warning: skipped the entry point broken-method") == 1
    assert [row["method"] for row in _rows(tmp_path / "model")] == ["ep-enum"]
    assert json.loads((tmp_path / "task" / "summary.json").read_text())["dataset"] == "ep-task"


@pytest.mark.slow
def test_seeds_in_worker_processes_import_the_plugin_themselves(
    tmp_path, monkeypatch, capsys, clean_registries
):
    _write(tmp_path / "worker_tasks.py", TASK.format(name="worker-copy"))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "seeds"
    argv = ["compare", "alignment", "--plugin", "worker_tasks.py", "--task", "worker-copy"]
    argv += [*TINY, "--seeds", "2", "--workers", "2", "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    for seed in (0, 1):
        summary = json.loads((out / f"seed-{seed}" / "summary.json").read_text())
        assert summary["dataset"] == "worker-copy" and summary["state"] == "finished"
