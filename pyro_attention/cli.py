"""The ``pyro-attention`` command.

``pyro-attention compare gmm`` fits the Bayesian GMM to the embedded data with every applicable
inference method and prints/writes the comparison; ``pyro-attention compare alignment`` trains
the latent-alignment seq2seq model on a generated task with the nine objectives of Deng et al.
(2018); ``pyro-attention compare digits`` fits the Bernoulli mixture of binarized digits and
compares the missing-pixel lookup; ``pyro-attention compare sgpa`` compares sparse-GP attention
with softmax attention and its calibration baselines; ``pyro-attention sla`` runs the
stacked-attention depth study; ``--seeds`` runs a comparison once per seed and reports the mean
± 2 SE; ``pyro-attention sweep SPEC`` runs a grid of comparisons from a TOML spec on a local
process pool or Ray (:mod:`pyro_attention.sweep`)::

    pyro-attention compare gmm --methods enum,cavi --steps 3000 --device cuda --out runs/gmm
    pyro-attention compare alignment --task dates --epochs 40 --out runs/dates
    pyro-attention compare digits --threads 1 --out runs/digits
    pyro-attention compare sgpa --task sequence --seeds 5 --out runs/sgpa-sequence
    pyro-attention sla --depths 1,2,4,8 --out runs/sla
    pyro-attention compare gmm --seeds 5 --workers 2
    pyro-attention sweep examples/gmm_sweep.toml --executor ray

``--plugin MODULE_OR_PATH`` (``compare``, ``sla``, ``sweep``; ``--import`` is an alias) imports
a module of your own before the command line is read, and installed packages join through
entry points (:mod:`pyro_attention.plugins`): what they register with ``register_task``,
``register_method`` and ``register_model`` can be named in ``--task``, ``--methods`` and
``compare <model>``, and ``--help`` lists it::

    pyro-attention compare alignment --plugin my_tasks.py --task my-task
    pyro-attention compare my-model --plugin my_pkg.models --methods enum,em
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import io
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pyro_attention._run_folder import check_output_folder, recorded_command
from pyro_attention.data.alignment_tasks import task_names
from pyro_attention.executors import EXECUTORS, make_executor
from pyro_attention.infer.registry import get_method, method_names
from pyro_attention.models.registry import SHIPPED_MODELS, get_model, model_names
from pyro_attention.models.seq2seq import ALIGNMENT_PRIORS
from pyro_attention.plugins import (
    PluginError,
    load_entry_points,
    load_plugin,
    plugin_argument,
)

#: the shipped comparisons; models registered with ``register_model`` join them
MODELS = SHIPPED_MODELS
#: the comparisons that ``--resume`` continues
RESUMABLE = ("gmm", "digits")
#: the digits comparison's default methods: closed-form EM against three gradient methods
DIGITS_DEFAULT_METHODS = ("em", "enum", "gumbel", "reinforce")
#: the GMM comparison's default methods: ``soft`` (one averaged Gaussian, not a mixture) and
#: the paper's aliases of these (exact, hard-enum, hard-sample, vi-sample) are left out
GMM_DEFAULT_METHODS = (
    "enum",
    "vi-enum",
    "reinforce",
    "rws",
    "gumbel",
    "dirichlet",
    "hard",
    "nuts",
    "cavi",
    "em",
)


class _RaisingParser(argparse.ArgumentParser):
    """A parser whose errors are :class:`ValueError` (to check a sweep's cells up front)."""

    def error(self, message: str) -> Any:
        raise ValueError(message)


def _add_executor_options(parser: argparse.ArgumentParser, what: str) -> None:
    """``--workers``, ``--executor`` and ``--address``: where the runs of ``what`` go."""
    group = parser.add_argument_group("executor options")
    group.add_argument(
        "--workers",
        type=int,
        default=1,
        help=f"{what} run at once (default 1: one after another in this process); each gets "
        "--threads torch threads (default 1)",
    )
    group.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="local",
        help="local: a process pool on this machine (default); ray: Ray tasks (pip install "
        "'pyro-attention[ray]'); serial: one after another in this process",
    )
    group.add_argument(
        "--address",
        default=None,
        help="ray: the cluster (auto for the running one, ray://host:10001); default a local "
        "Ray instance with --workers CPUs",
    )


#: the option that imports a plugin, and its older alias
PLUGIN_FLAGS = ("--plugin", "--import")


def _add_plugin_options(parser: argparse.ArgumentParser, what: str) -> None:
    """``--plugin MODULE_OR_PATH`` (repeatable) and its alias ``--import`` (hidden)."""
    parser.add_argument(
        "--plugin",
        dest="plugins",
        action="append",
        default=[],
        metavar="MODULE_OR_PATH",
        help="import a module (my_pkg.tasks) or a .py file before the command line is read "
        f"(repeatable, or comma-separated; --import is an alias): {what}",
    )
    parser.add_argument(
        "--import", dest="plugins", action="append", default=[], help=argparse.SUPPRESS
    )


def _model_help() -> str:
    """The help of ``compare``'s positional model: the shipped ones and those registered."""
    shipped = (
        "gmm: Bayesian GMM on the embedded 2-D data; alignment: latent-alignment seq2seq "
        "on a generated task (--task); digits: Bernoulli mixture on the binarized UCI digits; "
        "sgpa: sparse-GP attention against softmax attention and calibration baselines "
        "(--task digits or sequence)"
    )
    registered = [
        f"{name}: {get_model(name).help or 'a registered model'}" for name in model_names()
    ]
    text = "; ".join([shipped, *registered]) if registered else shipped
    return text.replace("%", "%%")


def _parser(parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser) -> Any:
    parser = parser_class(
        prog="pyro-attention",
        description="Compare inference methods on Pyro models with latent alignments.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    cmp = sub.add_parser(
        "compare",
        help="fit one model with several inference methods and score them on held-out data",
    )
    cmp.add_argument("model", choices=(*MODELS, *model_names()), help=_model_help())
    cmp.add_argument(
        "--methods",
        default=None,
        help=f"comma-separated methods (default: all the model supports); "
        f"known: {','.join(method_names())}; sgpa rows: softmax, kernel, sgpa, "
        "sgpa-official-kl, sgpa-standard, mc-dropout, temperature, ensemble",
    )
    cmp.add_argument(
        "--steps",
        type=int,
        default=None,
        help="SVI steps (default: gmm 1000; alignment --epochs; sgpa 600 full-batch steps)",
    )
    cmp.add_argument(
        "--lr",
        type=float,
        default=None,
        help="Adam learning rate (default: gmm 0.05, alignment and sgpa 3e-3)",
    )
    cmp.add_argument(
        "--subsample-size",
        type=int,
        default=None,
        help="mini-batch size for the SVI methods that support it",
    )
    cmp.add_argument(
        "--num-samples",
        type=int,
        default=None,
        help="posterior draws for the held-out metric (default 200; sgpa 10 predictive draws)",
    )
    cmp.add_argument(
        "--components", type=int, default=None, help="mixture components (gmm 4, digits 10)"
    )
    cmp.add_argument(
        "--covariance",
        choices=("full", "diag"),
        default=None,
        help="gmm: component covariances (default full); sgpa: the GP output noise (default "
        "diag, marginal variances)",
    )
    cmp.add_argument("--nuts-samples", type=int, default=150, help="NUTS draws per chain")
    cmp.add_argument("--nuts-warmup", type=int, default=150, help="NUTS warm-up per chain")
    cmp.add_argument("--nuts-chains", type=int, default=2, help="NUTS chains")
    seq = cmp.add_argument_group("alignment (seq2seq) options")
    seq.add_argument(
        "--task",
        default=None,
        help=f"alignment: {', '.join(task_names())} (default dates); sgpa: digits (default), "
        "sequence",
    )
    seq.add_argument("--epochs", type=float, default=25, help="training epochs (default 25)")
    seq.add_argument("--batch-size", type=int, default=32, help="examples per batch (default 32)")
    seq.add_argument(
        "--num-train",
        type=int,
        default=None,
        help="training examples (default: alignment 2000, sgpa digits 300, sequence 1000)",
    )
    seq.add_argument("--num-test", type=int, default=300, help="test examples (default 300)")
    seq.add_argument("--hidden", type=int, default=64, help="LSTM/MLP width (default 64)")
    seq.add_argument("--embed", type=int, default=32, help="embedding size (default 32)")
    seq.add_argument(
        "--temperature", type=float, default=None, help="gumbel's τ (default 0.5; gmm, digits too)"
    )
    seq.add_argument(
        "--rws-particles",
        type=int,
        default=None,
        help="RWS samples per alignment or point (default: alignment 5, gmm and digits 10)",
    )
    seq.add_argument(
        "--pretrain-fraction",
        type=float,
        default=None,
        help="share of dirichlet's steps spent on the Jensen bound first, in [0, 1) "
        "(default: alignment 0.3, gmm and digits 0)",
    )
    seq.add_argument(
        "--emission-chunk-size",
        type=int,
        default=None,
        help="source positions per chunk of the enumerated emission (caps memory)",
    )
    seq.add_argument(
        "--alignment-prior",
        choices=ALIGNMENT_PRIORS,
        default="independent",
        help="alignment: the prior of the alignments: independent given the decoder (default), "
        "markov (a learned jump distribution, HMM alignment) or monotonic (no backward jumps)",
    )
    seq.add_argument(
        "--max-jump",
        type=int,
        default=None,
        help="alignment: jumps beyond ±K share one bucket of the markov/monotonic prior "
        "(default 4)",
    )
    seq.add_argument("--kmax", type=int, default=5, help="K of the top-K perplexity (default 5)")
    seq.add_argument("--data-seed", type=int, default=0, help="seed of the generated examples")
    dig = cmp.add_argument_group("digits options")
    dig.add_argument(
        "--transformer-steps",
        type=int,
        default=2000,
        help="training steps of the pixel transformer of the lookup comparison (0: leave it out)",
    )
    dig.add_argument(
        "--knn", type=int, default=5, help="k of the nearest-neighbour lookup (default 5)"
    )
    dig.add_argument(
        "--no-lookup",
        action="store_true",
        help="skip the missing-pixel lookup comparison (mixtures, transformer, neighbours)",
    )
    cmp.add_argument(
        "--seeds",
        default=None,
        help="N runs from --seed on (e.g. 5), or a comma-separated list (0,3,7): one folder "
        "<out>/seed-S per seed (sgpa: one summary), and the mean ± 2 SE per method; a re-run "
        "keeps the seeds that finished",
    )
    gp = cmp.add_argument_group("sgpa options")
    gp.add_argument("--d-model", type=int, default=32, help="token width (default 32)")
    gp.add_argument("--heads", type=int, default=2, help="attention heads (default 2)")
    gp.add_argument("--layers", type=int, default=1, help="transformer blocks (default 1)")
    gp.add_argument("--inducing", type=int, default=16, help="global inducing points (16)")
    gp.add_argument("--dropout", type=float, default=0.1, help="MC dropout rate (default 0.1)")
    gp.add_argument("--ensemble-size", type=int, default=5, help="ensemble members (default 5)")
    gp.add_argument(
        "--heldout-classes",
        default="8,9",
        help="digits left out of training, their test images an OOD set (default 8,9; '' none)",
    )
    _add_plugin_options(
        cmp,
        "the tasks, methods and models it registers (register_task, register_method, "
        "register_model) can be named in --task, --methods and the model; --seeds passes it "
        "on to every seed's run",
    )
    cmp.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    cmp.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    cmp.add_argument("--seed", type=int, default=0)
    cmp.add_argument(
        "--out",
        default=None,
        help="output folder (default runs/<model>), owned by one run at a time; the files of the "
        "previous run in it are replaced",
    )
    cmp.add_argument(
        "--resume",
        action="store_true",
        help="gmm, digits, registered models: finish the interrupted run in --out (same "
        "options): finished methods are kept, the interrupted one goes on from its checkpoint",
    )
    cmp.add_argument("--no-progress", action="store_true", help="hide progress bars")
    cmp.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice; with --seeds 1 per run; 1 is often "
        "fastest on a busy machine)",
    )
    _add_executor_options(cmp, "--seeds: seeds")

    sla = sub.add_parser(
        "sla",
        help="depth study: plain vs stacked latent attention on k-hop pointer chasing",
    )
    sla.add_argument(
        "--depths", default="1,2,3,4,5,6,7,8", help="comma-separated numbers of layers"
    )
    sla.add_argument("--hops", type=int, default=3, help="pointer hops of the task (default 3)")
    sla.add_argument("--seeds", default="0,1", help="comma-separated training seeds (default 0,1)")
    sla.add_argument(
        "--variants",
        default="plain,latent",
        help="comma-separated: plain, latent, and the ablations latent-carry, latent-pool",
    )
    sla.add_argument("--steps", type=int, default=1500, help="Adam steps per run (default 1500)")
    sla.add_argument("--batch-size", type=int, default=128, help="examples per step (128)")
    sla.add_argument("--items", type=int, default=6, help="items per example (default 6)")
    sla.add_argument("--key-dim", type=int, default=8, help="key size (default 8)")
    sla.add_argument("--hidden", type=int, default=32, help="latent-map size (default 32)")
    sla.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate (1e-2)")
    sla.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    sla.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    sla.add_argument("--out", default="runs/sla", help="output folder (default runs/sla)")
    sla.add_argument("--no-progress", action="store_true", help="hide progress bars")
    _add_plugin_options(sla, "as for compare, e.g. in a sweep of sla and compare runs")

    swp = sub.add_parser(
        "sweep",
        help="run a grid of comparisons (commands x methods x settings x seeds) from a TOML spec",
    )
    swp.add_argument("spec", help="the TOML spec, e.g. examples/gmm_sweep.toml")
    swp.add_argument(
        "--out",
        default=None,
        help="output folder (default runs/<spec name>); re-runs skip the cells that finished",
    )
    swp.add_argument("--threads", type=int, default=1, help="torch threads per cell (default 1)")
    swp.add_argument(
        "--gpus-per-cell",
        type=float,
        default=None,
        help="ray: GPUs per cell (default 1 when a cell runs on cuda, else 0; 0.5 shares one)",
    )
    swp.add_argument(
        "--retries",
        type=int,
        default=None,
        help="how often a cell whose worker died is started again (default: local 1, ray 3)",
    )
    swp.add_argument("--dry-run", action="store_true", help="list the cells' commands and stop")
    swp.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_plugin_options(
        swp,
        "what it registers can be named in the spec's runs, and every cell imports it too "
        '(a run\'s options can also name its own: plugin = "my_tasks.py")',
    )
    _add_executor_options(swp, "cells")
    return parser


def _int_list(text: str, option: str, *, low: int | None = None) -> list[int]:
    """``"1,2,3"`` as ``[1, 2, 3]``, each at least ``low``; a clear error for anything else."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{option} must be comma-separated integers, got {text!r}") from None
    if low is not None and (not values or min(values) < low):
        raise ValueError(f"{option} must list integers >= {low}, e.g. {option} {low},{low + 1}")
    return values


def _sla(args: argparse.Namespace) -> int:
    from pyro_attention.experiments.sla_depth import sla_depth_study

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not variants:
        raise ValueError("--variants names no variant; e.g. --variants plain,latent")
    study = sla_depth_study(
        _int_list(args.depths, "--depths", low=1),
        hops=args.hops,
        seeds=_int_list(args.seeds, "--seeds", low=0),
        variants=variants,
        num_steps=args.steps,
        batch_size=args.batch_size,
        num_items=args.items,
        key_dim=args.key_dim,
        hidden_dim=args.hidden,
        lr=args.lr,
        device=_device(args.device),
        num_threads=args.threads,
        out=args.out,
        progress=not args.no_progress,
    )
    print(study)
    print(f"\nwrote {len(study.files)} files to {args.out}")
    return 0


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a torch device; use cpu or cuda") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name!r}: this command runs on cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name!r}: no CUDA device is available here; use cpu")
    return device


def _method_names(args: argparse.Namespace, default: Sequence[str]) -> list[str]:
    """``--methods`` split at commas, or ``default``."""
    if args.methods is None:
        return list(default)
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not names:
        example = ",".join(default[:2])
        raise ValueError(f"--methods {args.methods!r} names no method; e.g. --methods {example}")
    return names


def _methods(
    args: argparse.Namespace,
    default: Sequence[str],
    *,
    num_steps: int,
    rws_particles: int = 10,
    pretrain_fraction: float = 0.0,
    extra: dict[str, dict[str, Any]] | None = None,
) -> list:
    """The methods of ``--methods`` (or ``default``) with the options of the command line:
    NUTS's draws, RWS's particles, gumbel's τ, dirichlet's pre-training share of ``num_steps``."""
    fraction = pretrain_fraction if args.pretrain_fraction is None else args.pretrain_fraction
    options: dict[str, dict[str, Any]] = {
        "nuts": {
            "num_samples": args.nuts_samples,
            "warmup_steps": args.nuts_warmup,
            "num_chains": args.nuts_chains,
        },
        "rws": {
            "num_particles": rws_particles if args.rws_particles is None else args.rws_particles
        },
        "gumbel": {"temperature": 0.5 if args.temperature is None else args.temperature},
        "dirichlet": {"pretrain_steps": int(fraction * num_steps)},
    }
    for name, more in (extra or {}).items():
        options[name] = options.get(name, {}) | more
    return [get_method(name, **options.get(name, {})) for name in _method_names(args, default)]


#: options every comparison reads
COMMON_OPTIONS = frozenset(
    {"command", "model", "methods", "plugins", "device", "dtype", "seed", "out", "resume"}
    | {"no_progress", "threads", "seeds", "workers", "executor", "address"}
)
#: options of the inference methods of ``compare gmm`` and ``compare digits``
METHOD_OPTIONS = frozenset(
    {"steps", "lr", "subsample_size", "num_samples", "components", "temperature"}
    | {"rws_particles", "pretrain_fraction", "nuts_samples", "nuts_warmup", "nuts_chains"}
)
#: the options each comparison reads; any other given on the command line is refused
MODEL_OPTIONS = {
    "gmm": COMMON_OPTIONS | METHOD_OPTIONS | {"covariance"},
    "digits": COMMON_OPTIONS | METHOD_OPTIONS | {"transformer_steps", "knn", "no_lookup"},
    "alignment": COMMON_OPTIONS
    | {"steps", "lr", "task", "epochs", "batch_size", "num_train", "num_test", "hidden"}
    | {"embed", "temperature", "rws_particles", "pretrain_fraction", "emission_chunk_size"}
    | {"kmax", "data_seed", "alignment_prior", "max_jump"},
    "sgpa": COMMON_OPTIONS
    | {"steps", "lr", "num_samples", "covariance", "task", "num_train", "d_model"}
    | {"heads", "layers", "inducing", "dropout", "ensemble_size", "heldout_classes"},
}
#: the options of a model registered with ``register_model`` (run as ``compare gmm`` is)
REGISTERED_MODEL_OPTIONS = COMMON_OPTIONS | METHOD_OPTIONS


def _model_options(model: str) -> frozenset[str]:
    """The options comparison ``model`` reads (a registered model: the generic ones)."""
    return MODEL_OPTIONS.get(model, REGISTERED_MODEL_OPTIONS)


def _resumable(model: str) -> bool:
    """Whether ``compare <model> --resume`` continues an interrupted run."""
    return model in RESUMABLE or model not in MODELS


#: integer options that count something (at least 1)
COUNT_OPTIONS = frozenset(
    {"steps", "subsample_size", "num_samples", "components", "nuts_samples", "nuts_chains"}
    | {"batch_size", "num_train", "num_test", "hidden", "embed", "rws_particles", "kmax"}
    | {"emission_chunk_size", "knn", "d_model", "heads", "layers", "inducing", "max_jump"}
    | {"ensemble_size", "hops", "items", "key_dim", "threads", "workers"}
)
#: counts whose least value is not 1: (least value, why)
MINIMUMS = {"nuts_samples": (4, "split R-hat and the ESS need 4 draws per chain")}
#: integer options where 0 is meaningful
NON_NEGATIVE_OPTIONS = frozenset({"nuts_warmup", "transformer_steps", "retries"})
#: real options that must be finite and positive
POSITIVE_OPTIONS = frozenset({"lr", "temperature", "epochs"})
#: real options in an interval: (low, high, whether low is allowed)
INTERVAL_OPTIONS = {"pretrain_fraction": (0.0, 1.0, True), "dropout": (0.0, 1.0, False)}
#: seeds of torch, numpy and Python's random
SEED_OPTIONS = frozenset({"seed", "data_seed"})


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def check_options(args: argparse.Namespace) -> None:
    """Refuse, before any work, every numeric option out of its range, naming the flag."""
    for dest, value in vars(args).items():
        if value is None or isinstance(value, bool):
            continue
        flag = _flag(dest)
        least, why = MINIMUMS.get(dest, (1, ""))
        if dest in COUNT_OPTIONS and value < least:
            why = f" ({why})" if why else ""
            raise ValueError(f"{flag} must be an integer >= {least}{why}, got {value}")
        if dest in NON_NEGATIVE_OPTIONS and value < 0:
            raise ValueError(f"{flag} must be an integer >= 0, got {value}")
        if dest in POSITIVE_OPTIONS and not 0 < value < math.inf:
            raise ValueError(f"{flag} must be a finite number > 0, got {value}")
        if dest in INTERVAL_OPTIONS:
            low, high, closed = INTERVAL_OPTIONS[dest]
            if not (low <= value < high if closed else low < value < high):
                interval = f"{'[' if closed else '('}{low:g}, {high:g})"
                raise ValueError(f"{flag} must lie in {interval}, got {value}")
        if dest in SEED_OPTIONS and not 0 <= value < 2**32:
            raise ValueError(f"{flag} must be an integer in [0, 2**32 - 1], got {value}")


@functools.cache
def _defaults(command: str, model: str) -> dict[str, Any]:
    """Every option's default for ``pyro-attention compare <model>``."""
    return vars(_parser().parse_args([command, model]))


def _given(args: argparse.Namespace, dest: str) -> bool:
    """Whether option ``dest`` differs from its default (was given on the command line)."""
    return bool(getattr(args, dest) != _defaults(args.command, args.model).get(dest))


def _refuse_foreign_options(args: argparse.Namespace) -> None:
    """Refuse an option given on the command line that this comparison does not read."""
    allowed = _model_options(args.model)
    for dest in vars(args):
        if dest not in allowed and _given(args, dest):
            raise ValueError(f"{_flag(dest)} does not apply to compare {args.model}; drop it")


def _split_plugins(value: str) -> list[str]:
    """``--plugin a.py,b.py`` (as a sweep spec's list gives it) as ``["a.py", "b.py"]``; a file
    whose name has a comma stays whole."""
    if "," not in value or Path(value).is_file():
        return [value]
    return [part.strip() for part in value.split(",") if part.strip()]


class _PluginFlag(argparse.Action):
    """Collect ``(flag, value)``: which of ``--plugin`` and ``--import`` named each plugin."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
        namespace.plugins.append((option, values))


def _plugin_flags(argv: Sequence[str]) -> list[tuple[str, str]]:
    """The plugins named on a command line, ``(flag, name)`` in order, read before the full
    parser is built (so that its choices and help include what they register). A malformed
    ``--plugin`` is left to the full parser to report."""
    pre = _RaisingParser(add_help=False, allow_abbrev=False)
    pre.add_argument(*PLUGIN_FLAGS, action=_PluginFlag)
    try:
        namespace, _ = pre.parse_known_args(list(argv), argparse.Namespace(plugins=[]))
    except ValueError:
        return []
    return [(flag, name) for flag, value in namespace.plugins for name in _split_plugins(value)]


def _load_plugins(plugins: Sequence[tuple[str, str]]) -> None:
    """Import each plugin (each file once per process); a clear error naming ``--plugin``."""
    for flag, name in plugins:
        try:
            load_plugin(name)
        except PluginError as err:
            given = "" if flag == "--plugin" else f" (given as {flag})"
            message = str(err).removeprefix(f"{name}: ")
            raise ValueError(f"--plugin {name}{given}: {message}") from err


def _plugin_names(args: argparse.Namespace) -> list[str]:
    """The plugins of a parsed command line, comma-separated values split."""
    return [name for value in args.plugins for name in _split_plugins(value)]


def _finish(
    result: Any,
    args: argparse.Namespace,
    what: str = "method(s)",
    hint: str = "see their status; the other rows and files are in {out}",
) -> int:
    """Exit status of a comparison: 1 when a method (or cell) failed, naming them, else 0."""
    if result.failed:
        print(
            f"error: {len(result.failed)} {what} failed: {', '.join(result.failed)} "
            f"({hint.format(out=args.out)})",
            file=sys.stderr,
        )
        return 1
    return 0


def _svi_steps(args: argparse.Namespace) -> int:
    """``--steps`` of ``compare gmm`` and ``compare digits`` (default 1000)."""
    return 1000 if args.steps is None else int(args.steps)


def _run_compare(
    model: Any, train: Any, test: Any, methods: list, dataset: str, args: argparse.Namespace
) -> Any:
    """:func:`~pyro_attention.infer.compare.compare` with the command's options; print it."""
    from pyro_attention.infer.compare import compare

    result = compare(
        model,
        train,
        test,
        methods,
        num_steps=_svi_steps(args),
        lr=0.05 if args.lr is None else args.lr,
        subsample_size=args.subsample_size,
        num_samples=200 if args.num_samples is None else args.num_samples,
        seed=args.seed,
        dataset=dataset,
        out=args.out,
        resume=args.resume,
        progress=not args.no_progress,
    )
    if result.resumed:
        print(f"resumed: {', '.join(result.resumed)} taken from the interrupted run in {args.out}")
    print(result)
    return result


def _compare_gmm(args: argparse.Namespace) -> int:
    from pyro_attention.data import load_gmm2d
    from pyro_attention.models import BayesianGMM
    from pyro_attention.models.gmm_conjugate import GMMPrior

    device = _device(args.device)
    dtype = getattr(torch, args.dtype)
    data = load_gmm2d(dtype=dtype, device=device)
    dim = data.train.shape[1]
    covariance = args.covariance or "full"
    prior = GMMPrior.default(dim, covariance, dtype=dtype)
    components = 4 if args.components is None else args.components
    gmm = BayesianGMM(components, dim, covariance, prior=prior)
    methods = _methods(args, GMM_DEFAULT_METHODS, num_steps=_svi_steps(args))
    result = _run_compare(gmm, data.train, data.test, methods, "gmm2d", args)
    print(f"\nwrote {len(result.files)} files to {args.out}")
    return _finish(result, args)


def _compare_registered(args: argparse.Namespace) -> int:
    """``compare <name>`` of a model registered with ``register_model``: its ``build`` makes
    the model and the data, which run through ``compare()`` as ``compare gmm`` does."""
    from pyro_attention.infer.registry import applicable_methods
    from pyro_attention.models.registry import ModelOptions
    from pyro_attention.models.structure import inspect_model

    options = ModelOptions(
        device=_device(args.device),
        dtype=getattr(torch, args.dtype),
        seed=args.seed,
        components=args.components,
    )
    try:
        setup = get_model(args.model).setup(options)
    except ValueError:
        raise
    except Exception as err:  # the user's build: refused as an error of the command
        raise ValueError(
            f"compare {args.model}: building the model failed: {type(err).__name__}: {err}"
        ) from err
    default = setup.methods
    if default is None and args.methods is None:  # every method that applies, as compare()
        structure = inspect_model(setup.model, setup.train)
        default = applicable_methods(structure, args.subsample_size)
    methods = _methods(args, default or (), num_steps=_svi_steps(args))
    result = _run_compare(setup.model, setup.train, setup.test, methods, setup.dataset, args)
    print(f"\nwrote {len(result.files)} files to {args.out}")
    return _finish(result, args)


def _compare_digits(args: argparse.Namespace) -> int:
    from pyro_attention.data import load_digits_binary
    from pyro_attention.models import BernoulliMixture

    device = _device(args.device)
    digits = load_digits_binary(dtype=getattr(torch, args.dtype), device=device)
    components = 10 if args.components is None else args.components
    model = BernoulliMixture(components, 64, image_shape=digits.image_shape)
    methods = _methods(args, DIGITS_DEFAULT_METHODS, num_steps=_svi_steps(args))
    if args.no_lookup:
        for dest in ("knn", "transformer_steps"):
            if _given(args, dest):
                raise ValueError(
                    f"{_flag(dest)} sets the lookup, which --no-lookup leaves out; drop one"
                )
    elif args.knn > len(digits.train):  # refuse bad lookup options before any training
        raise ValueError(
            f"--knn {args.knn} exceeds the {len(digits.train)} training images; use fewer"
        )
    comparison = _run_compare(model, digits.train, digits.test, methods, "digits8x8", args)
    if not args.no_lookup:
        from pyro_attention._run_folder import RunFolder
        from pyro_attention.experiments.digits_lookup import digits_lookup

        kind = f"compare {model.name}"  # the folder compare() just wrote
        with RunFolder(args.out, resume=True, option="--out", seed=args.seed, kind=kind) as folder:
            folder.adopt_previous_files()
            comparison.folder = folder
            comparison.write_summary("running")
            state = "interrupted"
            try:
                lookup = digits_lookup(
                    {name: draws.samples for name, draws in comparison.draws.items()},
                    digits.train,
                    digits.test,
                    image_shape=digits.image_shape,
                    knn=args.knn,
                    transformer_steps=args.transformer_steps,
                    seed=args.seed,
                    out=args.out,
                    progress=not args.no_progress,
                )
                comparison.sections["lookup"] = {
                    "settings": lookup.settings,
                    "results": lookup.rows,
                }
                comparison.files += [folder.record(path) for path in lookup.files]
                state = "finished"
            finally:
                comparison.files.append(comparison.write_summary(state))
        print("\nmissing pixels of the test digits (NLL per pixel in nats, accuracy):")
        print(lookup)
    print(f"\nwrote {len(set(comparison.files))} files to {args.out}")
    return _finish(comparison, args)


def _compare_alignment(args: argparse.Namespace) -> int:
    from pyro_attention.data import get_task, make_alignment_dataset
    from pyro_attention.experiments.compare_alignment import (
        CHAIN_METHODS,
        PAPER_METHODS,
        chain_options,
        compare_alignment,
    )
    from pyro_attention.models import LatentAlignmentSeq2Seq

    device = _device(args.device)
    data = make_alignment_dataset(
        get_task(args.task),
        num_train=2000 if args.num_train is None else args.num_train,
        num_valid=max(1, args.num_test // 2),
        num_test=args.num_test,
        seed=args.data_seed,
    )
    batches_per_epoch = -(-len(data.train) // args.batch_size)
    if args.steps is not None and _given(args, "epochs"):
        raise ValueError("--steps and --epochs both set the training length; give one")
    steps = args.steps if args.steps is not None else round(args.epochs * batches_per_epoch)
    steps = max(1, steps)  # a fraction of an epoch is at least one step
    chained = args.alignment_prior != "independent"
    methods = _methods(
        args,
        CHAIN_METHODS if chained else PAPER_METHODS,
        num_steps=steps,
        rws_particles=5,
        pretrain_fraction=0.3,
        extra=chain_options(chained),
    )
    dtype = getattr(torch, args.dtype)

    def make_model() -> LatentAlignmentSeq2Seq:
        model = LatentAlignmentSeq2Seq(
            len(data.source_vocab),
            len(data.target_vocab),
            args.embed,
            args.hidden,
            emission_chunk_size=args.emission_chunk_size,
            alignment_prior=args.alignment_prior,
            max_jump=4 if args.max_jump is None else args.max_jump,
        )
        return model.to(dtype=dtype)

    result = compare_alignment(
        make_model,
        data,
        methods,
        num_steps=steps,
        batch_size=args.batch_size,
        lr=3e-3 if args.lr is None else args.lr,
        k=args.kmax,
        seed=args.seed,
        device=device,
        out=args.out,
        progress=not args.no_progress,
    )
    print(f"{args.task}: {len(data.train)} training examples, {steps} steps of {args.batch_size}")
    print(result)
    print(f"\nwrote {len(result.files)} files to {args.out}")
    return _finish(result, args)


def _seeds(text: str, first: int) -> list[int]:
    """``--seeds``: a count N (``first .. first + N - 1``) or a comma-separated list."""
    from pyro_attention.sweep import parse_seed_text

    return parse_seed_text(text, "--seeds", first)


def _compare_sgpa(args: argparse.Namespace) -> int:
    from pyro_attention.experiments.compare_sgpa import SGPA_METHODS, SGPASettings, compare_sgpa

    device = _device(args.device)
    task = args.task or "digits"
    if task == "sequence" and args.heldout_classes != "8,9":
        raise ValueError("--heldout-classes applies to --task digits only")
    settings = SGPASettings(
        num_train=args.num_train,
        steps=600 if args.steps is None else args.steps,
        lr=3e-3 if args.lr is None else args.lr,
        d_model=args.d_model,
        num_heads=args.heads,
        num_layers=args.layers,
        num_inducing=args.inducing,
        covariance=args.covariance or "diag",
        num_samples=10 if args.num_samples is None else args.num_samples,
        dropout=args.dropout,
        ensemble_size=args.ensemble_size,
        heldout_classes=tuple(_int_list(args.heldout_classes, "--heldout-classes")),
    )
    if args.d_model % args.heads:
        raise ValueError(f"--d-model {args.d_model} must be a multiple of --heads {args.heads}")
    result = compare_sgpa(
        task,
        _method_names(args, SGPA_METHODS),
        seeds=_seeds("1" if args.seeds is None else args.seeds, args.seed),
        settings=settings,
        device=device,
        dtype=getattr(torch, args.dtype),
        out=args.out,
        progress=not args.no_progress,
    )
    print(f"sgpa on {task}: {settings.steps} full-batch steps per model")
    print(result)
    print(f"\nwrote {len(result.files)} files to {args.out}")
    return _finish(result, args)


#: options of a --seeds run that each seed's own command does not repeat (it sets its own)
_DRIVER_OPTIONS = frozenset(
    {"command", "model", "seeds", "seed", "out", "threads", "no_progress", "resume"}
    | {"workers", "executor", "address"}
)


def _seed_argv(args: argparse.Namespace) -> list[str]:
    """The options given on the command line, as arguments for one seed's run of it."""
    argv = [args.command, args.model]
    for dest, value in vars(args).items():
        if dest in _DRIVER_OPTIONS or not _given(args, dest):
            continue
        if dest == "plugins":  # absolute paths: a seed's run may start in another folder
            for name in _plugin_names(args):
                argv += ["--plugin", plugin_argument(name)]
        elif value is True:
            argv.append(_flag(dest))
        else:
            argv += [_flag(dest), str(value)]
    return argv


def run_cell(job: dict[str, Any]) -> dict[str, Any]:
    """Run one cell of a sweep (or one seed of ``--seeds``) where the executor put it.

    ``job["argv"]`` is the command's arguments with ``--out <final folder>``; the command runs
    into a temporary folder of this machine (recording ``job["command"]`` as its provenance),
    and its files come back as bytes, so that the driver writes them where the sweep keeps them
    whatever machine ran the cell.

    :returns: ``{"exit_code", "files": {name: bytes}, "log": stdout and stderr, "seconds"}``.
    """
    argv = list(job["argv"])
    at = argv.index("--out") + 1
    final = argv[at]
    log = io.StringIO()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pyro-attention-cell-") as folder:
        argv[at] = folder
        with (
            recorded_command(job["command"]),
            contextlib.redirect_stdout(log),
            contextlib.redirect_stderr(log),
        ):
            code = main(argv)
        files = {
            path.name: path.read_bytes()
            for path in Path(folder).iterdir()
            if path.is_file() and not path.name.startswith(".")
        }
    return {
        "exit_code": code,
        "files": files,
        "log": log.getvalue().replace(folder, final),
        "seconds": time.perf_counter() - start,
    }


def _executor(
    args: argparse.Namespace, *, num_gpus: float = 0.0, retries: int | None = None
) -> Any:
    """The executor of ``--executor``, ``--workers``, ``--address`` (checked before any work)."""
    if args.address is not None and args.executor != "ray":
        raise ValueError("--address names a Ray cluster; add --executor ray or drop it")
    if args.executor == "serial" and args.workers != 1:
        raise ValueError(
            f"--executor serial runs one cell at a time; drop --workers {args.workers}"
        )
    if num_gpus and args.executor != "ray":
        raise ValueError("--gpus-per-cell sets a Ray task's GPUs; add --executor ray or drop it")
    if retries is not None and args.executor == "serial":
        raise ValueError("--retries restarts cells whose worker died; the serial executor has none")
    default_retries = 3 if args.executor == "ray" else 1
    return make_executor(
        args.executor,
        workers=args.workers if args.executor != "ray" or args.address is None else None,
        threads=1 if args.threads is None else args.threads,
        address=args.address,
        num_gpus=num_gpus,
        retries=default_retries if retries is None else retries,
    )


def _run_sweep_cells(
    cells: list, args: argparse.Namespace, executor: Any, kind: str, **description: Any
) -> int:
    from pyro_attention.sweep import run_cells

    connect = getattr(executor, "connect", None)
    if connect is not None:  # a cluster that cannot be reached is refused before any file
        try:
            connect()
        except Exception as err:
            where = f"--address {args.address}" if args.address else "--executor ray"
            raise ValueError(f"{where}: cannot start or reach Ray ({err})") from None
    sweep = run_cells(
        cells,
        run_cell,
        executor,
        args.out,
        kind=kind,
        description=description,
        progress=not args.no_progress,
    )
    print(sweep)
    records = sweep.records.values()
    kept = sum(1 for r in records if r.get("reused"))
    done = sum(1 for r in records if r["status"] == "finished") - kept
    crashed = len(cells) - kept - done
    print(
        f"\n{len(cells)} cells: {done} run now, {kept} kept from an earlier run"
        + (f", {crashed} failed" if crashed else "")
        + f"; summary.json and the cells' folders in {args.out}"
    )
    return _finish(
        sweep,
        args,
        "cell(s) or method(s)",
        "see summary.json and {out}/logs; a re-run starts the crashed cells again",
    )


def _compare_seeds(args: argparse.Namespace) -> int:
    """``compare <model> --seeds``: one run per seed in ``<out>/seed-S``, then mean ± 2 SE."""
    from pyro_attention.sweep import Cell

    if args.resume:
        raise ValueError("--resume: a --seeds run always keeps the seeds that finished; drop it")
    seeds = _seeds(args.seeds, args.seed)
    threads = 1 if args.threads is None else args.threads
    base = _seed_argv(args)
    if args.model == "alignment":  # the run of every seed would refuse these
        _check_alignment_methods(args)
    cells = [
        Cell(
            name=f"seed-{seed}",
            command=f"compare {args.model}",
            argv=(*base, "--seed", str(seed), "--threads", str(threads), "--no-progress"),
            seed=seed,
        )
        for seed in seeds
    ]
    executor = _executor(
        args, num_gpus=1.0 if args.device.startswith("cuda") and args.executor == "ray" else 0.0
    )
    return _run_sweep_cells(
        cells,
        args,
        executor,
        f"compare {args.model} --seeds",
        command=f"compare {args.model}",
        seeds=seeds,
    )


def check_cell_command(argv: Sequence[str]) -> None:
    """Refuse, before any cell runs, a cell whose command the CLI would refuse: the checks
    of :func:`main` before any work, and its methods and task known."""
    args = _parse(list(argv), _RaisingParser)
    check_options(args)
    if args.command != "compare":
        _device(args.device)
        return
    _check_compare(args)
    if args.model == "sgpa":
        from pyro_attention.experiments.compare_sgpa import SGPA_METHODS

        unknown = [m for m in _method_names(args, SGPA_METHODS) if m not in SGPA_METHODS]
        if unknown:
            raise ValueError(f"unknown sgpa row(s) {unknown}; use {', '.join(SGPA_METHODS)}")
        return
    names = _method_names(args, GMM_DEFAULT_METHODS)
    for name in names:
        get_method(name)
    if len(set(names)) != len(names):
        raise ValueError(f"--methods {args.methods!r} names a method twice")
    if args.model == "alignment":
        _check_alignment_methods(args)


def _check_alignment_methods(args: argparse.Namespace) -> None:
    """The task known, and every method of ``compare alignment`` applicable to the model with
    the chosen prior (read from a model on two examples of the task, as the run will)."""
    from pyro_attention.data import get_task, make_alignment_dataset
    from pyro_attention.experiments.compare_alignment import (
        CHAIN_METHODS,
        PAPER_METHODS,
        paper_method,
    )
    from pyro_attention.models import LatentAlignmentSeq2Seq
    from pyro_attention.models.structure import inspect_model

    data = make_alignment_dataset(get_task(args.task), num_train=2, num_valid=1, num_test=1)
    model = LatentAlignmentSeq2Seq(
        len(data.source_vocab), len(data.target_vocab), 4, 4, alignment_prior=args.alignment_prior
    )
    structure = inspect_model(model, data.tensors("train"))
    default = CHAIN_METHODS if model.chained else PAPER_METHODS
    for name in _method_names(args, default):
        paper_method(name, 10, chained=model.chained).check(structure)


def _cell_with_plugins(cell: Any, plugins: Sequence[str]) -> Any:
    """``cell`` with the sweep's own ``--plugin`` s first and every plugin path absolute (a cell
    runs in a temporary folder, maybe on another machine)."""
    words = list(cell.argv)
    at = len(cell.command.split())
    argv = words[:at] + [word for name in plugins for word in ("--plugin", name)]
    rest = iter(words[at:])
    for word in rest:
        flag, equals, value = word.partition("=")
        if flag in PLUGIN_FLAGS and equals:
            argv.append(f"{flag}={','.join(map(plugin_argument, _split_plugins(value)))}")
        elif word in PLUGIN_FLAGS:
            value = next(rest, None)
            if value is None:
                argv.append(word)  # the check of the cell reports it
            else:
                argv += [word, ",".join(map(plugin_argument, _split_plugins(value)))]
        else:
            argv.append(word)
    return dataclasses.replace(cell, argv=tuple(argv))


def _sweep(args: argparse.Namespace) -> int:
    """``pyro-attention sweep SPEC``: every cell checked first, then run by the executor."""
    from pyro_attention.sweep import expand_spec, iter_cells_text, read_spec

    spec = read_spec(args.spec)
    if args.out is None:
        args.out = f"runs/{Path(args.spec).stem}"
    check_output_folder(args.out, "--out")
    plugins = [plugin_argument(name) for name in _plugin_names(args)]
    cells = [_cell_with_plugins(cell, plugins) for cell in expand_spec(spec, threads=args.threads)]
    for cell in cells:
        try:
            check_cell_command(cell.argv)
        except ValueError as err:
            raise ValueError(f"cell {cell.name}: {err}") from None
    if args.gpus_per_cell is not None and not 0 <= args.gpus_per_cell < math.inf:
        raise ValueError(f"--gpus-per-cell must be a finite number >= 0, got {args.gpus_per_cell}")
    on_cuda = any(word.startswith("cuda") for cell in cells for word in cell.argv)
    if args.gpus_per_cell is not None:
        gpus = args.gpus_per_cell
    else:
        gpus = float(on_cuda and args.executor == "ray")
    executor = _executor(args, num_gpus=gpus, retries=args.retries)
    if args.dry_run:
        for line in iter_cells_text(cells, Path(args.out)):
            print(line)
        return 0
    return _run_sweep_cells(cells, args, executor, "sweep", spec=str(args.spec), spec_content=spec)


def _parse(
    argv: Sequence[str] | None,
    parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser,
) -> argparse.Namespace:
    """The command line, with the defaults that depend on other options filled in.

    The installed entry points and the command line's ``--plugin`` s are loaded first, so
    that the parser's choices and help include what they register.

    :raises ValueError: a plugin that cannot be loaded.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    load_entry_points()
    _load_plugins(_plugin_flags(argv))
    args = _parser(parser_class).parse_args(argv)
    if args.command == "compare" and args.model == "alignment" and args.task is None:
        args.task = "dates"
    if args.command == "compare" and args.out is None:
        folder = {"alignment": args.task, "sgpa": f"sgpa-{args.task or 'digits'}"}
        args.out = f"runs/{folder.get(args.model, args.model)}"
    return args


def _check_compare(args: argparse.Namespace) -> None:
    """The checks of a comparison's options that need no work (a sweep runs them on every
    cell before any cell starts)."""
    _refuse_foreign_options(args)
    _device(args.device)
    if args.resume and not _resumable(args.model):
        raise ValueError(
            f"--resume applies to compare gmm, compare digits and registered models; "
            f"compare {args.model} "
            "starts again (its finished rows of an interrupted run are in summary.json)"
        )
    if args.model == "sgpa" and (args.workers != 1 or _given(args, "executor")):
        raise ValueError(
            "compare sgpa runs its --seeds in one process; spread them with "
            "pyro-attention sweep (one cell per seed) instead"
        )
    if args.model == "alignment" and args.max_jump is not None:
        if args.alignment_prior == "independent":
            raise ValueError("--max-jump applies to --alignment-prior markov or monotonic only")
    if args.model != "sgpa" and args.seeds is None:
        for dest in ("workers", "executor", "address"):
            if _given(args, dest):
                raise ValueError(f"{_flag(dest)} spreads the runs of --seeds; add --seeds")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pyro-attention`` console script."""
    try:
        args = _parse(argv)
    except ValueError as err:  # a plugin that cannot be loaded, before any work
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        check_options(args)
        if args.command == "compare" and args.threads is not None and args.seeds is None:
            torch.set_num_threads(args.threads)
        if args.command == "compare":  # checked first: an unwritable folder loses every result
            check_output_folder(args.out, "--out")
            _check_compare(args)
            if args.model != "sgpa" and args.seeds is not None:
                return _compare_seeds(args)
        if args.command == "sweep":
            return _sweep(args)
        if args.command == "compare" and args.model == "gmm":
            return _compare_gmm(args)
        if args.command == "compare" and args.model == "alignment":
            return _compare_alignment(args)
        if args.command == "compare" and args.model == "digits":
            return _compare_digits(args)
        if args.command == "compare" and args.model == "sgpa":
            return _compare_sgpa(args)
        if args.command == "compare":
            return _compare_registered(args)
        if args.command == "sla":
            return _sla(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        resumable = args.command == "compare" and _resumable(args.model)
        hint = "; the same command with --resume finishes it" if resumable else ""
        if args.command == "sweep" or (
            args.command == "compare" and args.model != "sgpa" and args.seeds is not None
        ):
            hint = "; the same command runs what did not finish"
        print(
            f"interrupted: the finished results are kept in {args.out}/summary.json{hint}",
            file=sys.stderr,
        )
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
