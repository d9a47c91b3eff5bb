"""The README's measured tables, generated from the result files committed in ``results/``.

Each table sits between ``<!-- table:NAME -->`` and ``<!-- /table:NAME -->`` in the README and
ends with a line naming the files, the command that wrote them, the commit, torch, threads and
the machine load (all read from the files' provenance). Over several seeds a cell is the mean
± two standard errors.

    python scripts/readme_tables.py            # check: exit 1 with a diff when README is stale
    python scripts/readme_tables.py --write    # rewrite the tables in README.md
    python scripts/readme_tables.py --print gmm

To re-measure a table, run the command of its provenance line (one per seed), then ``--write``.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without an install
    sys.path.insert(0, str(REPO))

from pyro_attention.diagnostics.calibration import mean_and_error  # noqa: E402

MINUS = "\u2212"


# ----------------------------------------------------------------------------- formatting
def number(value: float | None, digits: int = 3, *, thousands: bool = False) -> str:
    """``value`` with ``digits`` decimals and a typographic minus; ``–`` for None/NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    text = f"{value:,.{digits}f}" if thousands else f"{value:.{digits}f}"
    return text.replace("-", MINUS)


def mean_cell(values: Sequence[float | None], digits: int = 3, *, thousands: bool = False) -> str:
    """``mean ± 2 SE`` over seeds (the mean alone for one seed); ``–`` when there is none."""
    present = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not present:
        return "–"
    if len(present) == 1:
        return number(present[0], digits, thousands=thousands)
    mean, error = mean_and_error(present)
    return (
        f"{number(mean, digits, thousands=thousands)} ± "
        f"{number(error, digits, thousands=thousands)}"
    )


def markdown(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; run the command of its table to make it")
    return json.loads(path.read_text())


def seed_summaries(folder: Path, name: str = "summary.json") -> list[dict[str, Any]]:
    """The ``summary.json`` of every ``seed-N`` subfolder of ``folder``, by seed."""
    paths = sorted(folder.glob(f"seed-*/{name}"), key=lambda p: int(p.parent.name[5:]))
    if not paths:
        raise FileNotFoundError(f"no {folder}/seed-N/{name}; run the command of its table")
    summaries = [read(p) for p in paths]
    for path, summary in zip(paths, summaries, strict=True):
        if summary.get("state", "finished") != "finished":
            raise ValueError(f"{path} is from a run that did not finish ({summary['state']})")
    return summaries


def by_method(summaries: Sequence[dict[str, Any]], key: str = "results") -> dict[str, list]:
    """``{method: [row of seed 0, row of seed 1, ...]}`` in the first summary's order."""
    rows: dict[str, list] = {}
    for summary in summaries:
        for row in summary[key]:
            rows.setdefault(row["method"], []).append(row)
    return rows


def provenance_line(files: str, provenances: Sequence[dict[str, Any]], note: str = "") -> str:
    """One italic line: the files, the command, commit, torch, threads, load, date."""
    commands = [p.get("command") or "" for p in provenances]
    if isinstance(commands[0], list):  # an older file: the argv list
        commands = [" ".join(c) for c in commands]
    # a file written by ``python -m pyro_attention.cli``: the command a user types
    commands = [re.sub(r"^\S*cli\.py\b", "pyro-attention", c) for c in commands]
    commands = [re.sub(r"^\S*python\S*\s+", "python ", c) for c in commands]
    seeds = [p.get("seed") for p in provenances]
    command = commands[0]
    seed_text = ""
    if len(provenances) > 1:
        command = re.sub(r"seed-\d+", "seed-S", re.sub(r"--seed \d+", "--seed S", command))
        seed_text = f" for S = {', '.join(str(s) for s in dict.fromkeys(seeds))}"
    commits = sorted({(p.get("commit") or p.get("git_commit") or "?")[:7] for p in provenances})
    torches = sorted({p.get("torch", "?") for p in provenances})
    threads = sorted({str(p.get("threads", "?")) for p in provenances})
    loads = [
        (p.get("load_average") or p.get("loadavg_start") or [math.nan])[0] for p in provenances
    ]
    days = sorted({(p.get("time") or "")[:10] for p in provenances} - {""})
    cpus = sorted({str(p.get("cpu_count")) for p in provenances if p.get("cpu_count")})
    parts = [
        f"`{files}` from `{command}`{seed_text}",
        f"commit {', '.join(commits)}",
        f"torch {', '.join(torches)}",
        f"threads {'/'.join(threads)}",
        f"load average {min(loads):.1f}"
        + (f"–{max(loads):.1f}" if f"{max(loads):.1f}" != f"{min(loads):.1f}" else "")
        + (f" on {'/'.join(cpus)} cores" if cpus else ""),
    ]
    if days:
        parts.append(", ".join(days))
    return "_" + "; ".join(parts) + (f". {note}" if note else ".") + "_"


# ----------------------------------------------------------------------------- the tables
GMM_LABELS = {
    "em": "`em` (maximum likelihood)",
    "nuts": "`nuts` (2 × 150 draws)",
    "cavi": "`cavi` (closed form)",
    "vi-enum": "`vi-enum`",
    "enum": "`enum`",
    "reinforce": "`reinforce` (decaying-average baseline)",
    "rws": "`rws` (10 particles)",
    "gumbel": "`gumbel` (straight-through, τ = 0.5, exact KL)",
    "dirichlet": "`dirichlet` (relaxed model)",
    "hard": "`hard` (z from the prior, Jensen bound)",
}


def gmm_table(results: Path) -> str:
    summaries = seed_summaries(results / "gmm")
    rows = by_method(summaries)
    order = sorted(rows, key=lambda m: -sum(r["heldout_log_lik"] for r in rows[m]) / len(rows[m]))
    body = []
    for method in order:
        seeds = rows[method]
        objective = seeds[0]["objective"]
        train = mean_cell([r.get("train_objective") for r in seeds])
        if train != "–" and objective not in ("ELBO",):
            train = f"{train} ({objective})"
        body.append(
            [
                GMM_LABELS.get(method, f"`{method}`"),
                mean_cell([r["heldout_log_lik"] for r in seeds]),
                train,
                mean_cell([r["seconds"] for r in seeds], 2 if seeds[0]["seconds"] > 0.1 else 3),
                mean_cell([r.get("psis_khat") for r in seeds], 2),
            ]
        )
    header = [
        "method",
        "held-out log-lik / point",
        "training objective / point",
        "seconds",
        "PSIS k̂",
    ]
    line = provenance_line("results/gmm/seed-*/summary.json", [s["provenance"] for s in summaries])
    return markdown(header, body) + "\n\n" + line


ALIGNMENT_COLUMNS = (
    ("ppl", "ppl", 3),
    ("kmax_ppl", "K-max ppl", 3),
    ("elbo_q", "ELBO_q", 3),
    ("prior_entropy", "H", 3),
    ("alignment_accuracy", "acc", 2),
    ("tokens_per_second", "tok/s", 0),
)
ALIGNMENT_LABELS = {"rws": "rws (5 samples)", "gumbel": "gumbel (τ = 0.5)"}


def alignment_table(results: Path, task: str) -> str:
    summaries = seed_summaries(results / f"alignment-{task}")
    rows = by_method(summaries)
    body = [
        [ALIGNMENT_LABELS.get(method, method)]
        + [
            mean_cell([r.get(key) for r in seeds], digits, thousands=key == "tokens_per_second")
            for key, _, digits in ALIGNMENT_COLUMNS
        ]
        for method, seeds in rows.items()
    ]
    header = ["method", *(name for _, name, _ in ALIGNMENT_COLUMNS)]
    line = provenance_line(
        f"results/alignment-{task}/seed-*/summary.json", [s["provenance"] for s in summaries]
    )
    return markdown(header, body) + "\n\n" + line


def alignment_elpd_table(results: Path) -> str:
    """The held-out ELPD ranking (``arviz_stats.compare``, per test sequence) of each task's
    first seed with its standard errors, beside the perplexity, and the mean rank over every
    seed whose run ranked its methods."""
    body, provenances = [], []
    for task in ("dates", "translation"):
        ranked = [s for s in seed_summaries(results / f"alignment-{task}") if "elpd_compare" in s]
        if not ranked:
            raise FileNotFoundError(f"no ranked seed in results/alignment-{task}; rerun one")
        provenances += [s["provenance"] for s in ranked]
        ranks: dict[str, list[int]] = {}
        for summary in ranked:
            for row in summary["elpd_compare"]["ranking"]:
                ranks.setdefault(row["method"], []).append(row["rank"] + 1)
        first = ranked[0]
        ppl = {row["method"]: row["ppl"] for row in first["results"]}
        by_ppl = sorted(ppl, key=ppl.__getitem__)
        for row in first["elpd_compare"]["ranking"]:
            method = row["method"]
            body.append(
                [
                    task,
                    f"`{method}`",
                    f"{row['elpd']:.1f} ± {row['se']:.1f}",
                    f"{row['elpd_diff']:.1f} ± {row['dse']:.1f}",
                    str(row["rank"] + 1),
                    f"{ppl[method]:.4f} ({by_ppl.index(method) + 1})",
                    f"{sum(ranks[method]) / len(ranks[method]):.1f}",
                ]
            )
    header = [
        "task",
        "method",
        "ELPD ± se",
        "ELPD diff ± dse",
        "rank",
        "ppl (rank)",
        f"mean rank ({len(provenances) // 2} seeds)",
    ]
    seeds = sorted({p.get("seed") for p in provenances})
    line = provenance_line(
        "results/alignment-{dates,translation}/seed-*/summary.json",
        provenances,
        note=f"The same with `--task translation`. ELPD of seed {seeds[0]}'s test sequences "
        f"(nats); mean rank over the seeds {', '.join(map(str, seeds))}",
    )
    return markdown(header, body) + "\n\n" + line


PRIOR_TASKS = ("dates", "translation", "reverse")
ALIGNMENT_PRIORS = ("independent", "markov", "monotonic")
PRIOR_COLUMNS = (
    ("heldout_log_lik", "log-lik / token", 3),
    ("ppl", "ppl", 3),
    ("prior_entropy", "H", 3),
    ("alignment_accuracy", "Viterbi acc", 3),
    ("tokens_per_second", "tok/s", 0),
)


def alignment_priors_table(results: Path) -> str:
    """The exact objective under each alignment prior on each task, from the cells of
    ``pyro-attention sweep examples/alignment_priors_sweep.toml``."""
    folder = results / "alignment-priors" / "alignment"
    body, provenances = [], []
    for task in PRIOR_TASKS:
        for prior in ALIGNMENT_PRIORS:
            cell = folder / f"task={task},alignment_prior={prior}" / "exact"
            summaries = seed_summaries(cell)
            provenances += [s["provenance"] for s in summaries]
            seeds = [row for s in summaries for row in s["results"]]
            body.append(
                [task, prior]
                + [
                    mean_cell(
                        [r.get(key) for r in seeds], digits, thousands=key == "tokens_per_second"
                    )
                    for key, _, digits in PRIOR_COLUMNS
                ]
            )
    header = ["task", "prior", *(name for _, name, _ in PRIOR_COLUMNS)]
    line = provenance_line(
        "results/alignment-priors/alignment/task=*,alignment_prior=*/exact/seed-*/summary.json",
        provenances,
        note=f"{len(provenances)} runs, one per task, prior and seed, written by "
        "`pyro-attention sweep examples/alignment_priors_sweep.toml --workers 2 --out "
        "results/alignment-priors`",
    )
    return markdown(header, body) + "\n\n" + line


CHAIN_VARIANTS = ("independent", "markov-pyro", "markov-forward", "markov-funsor")


def alignment_chain_table(results: Path) -> str:
    """Step time and peak memory of the exact objective, independent prior against three ways
    of summing the Markov chain (``bench/bench_alignment_chain.py``)."""
    figures = read(results / "bench" / "alignment_chain.json")
    body = []
    for row in figures["rows"]:
        cells = [f"{row['S']} × {row['T']}", number(1e3 * row["independent"]["seconds"], 1)]
        for name in CHAIN_VARIANTS[1:]:
            cells.append(f"{row[name]['ratio']:.2f}×")
        cells += [number(row[name]["peak_mb"], 1) for name in CHAIN_VARIANTS]
        body.append(cells)
    header = ["S × T", "independent ms", "Pyro enum", "forward", "funsor"]
    header += [f"{name} MB" for name in ("indep.", "Pyro", "fwd", "funsor")]
    batch = figures["rows"][0]["B"]
    line = provenance_line(
        "results/bench/alignment_chain.json",
        [figures["provenance"]],
        note=f"one forward and backward pass of {batch} sequences; times are medians of "
        "interleaved rounds, as ratios to the independent prior's",
    )
    return markdown(header, body) + "\n\n" + line


def parameters(row: dict[str, Any]) -> str:
    """A lookup row's parameter count; the neighbours' is the training set itself."""
    count = row.get("parameters")
    if count is None:
        return "–"
    return f"{count:,} (the training set)" if row["kind"] == "nearest-neighbour" else f"{count:,}"


def digits_tables(results: Path) -> tuple[str, str]:
    """The mixture comparison (held-out log-likelihood per image) and the lookup table."""
    summaries = seed_summaries(results / "digits")
    rows = by_method(summaries)
    order = sorted(rows, key=lambda m: -sum(r["heldout_log_lik"] for r in rows[m]) / len(rows[m]))
    mixture = markdown(
        ["method", "held-out log-lik / image", "training objective / image", "seconds"],
        [
            [
                f"`{method}`",
                mean_cell([r["heldout_log_lik"] for r in rows[method]], 2),
                mean_cell([r.get("train_objective") for r in rows[method]], 2),
                mean_cell([r["seconds"] for r in rows[method]], 2),
            ]
            for method in order
        ],
    )
    lookups = [s["lookup"] for s in summaries]
    cells: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for lookup in lookups:
        for row in lookup["results"]:
            cells.setdefault(row["method"], {}).setdefault(row["scheme"], []).append(row)
    schemes = list(dict.fromkeys(r["scheme"] for r in lookups[0]["results"]))
    body = []
    first = schemes[0]
    ordered = sorted(
        cells.items(),
        key=lambda item: sum(r["pixel_nll"] for r in item[1][first]) / len(item[1][first]),
    )
    for method, per_scheme in ordered:
        body.append(
            [method]
            + [
                f"{mean_cell([r['pixel_nll'] for r in per_scheme[s]])} / "
                f"{mean_cell([r['pixel_accuracy'] for r in per_scheme[s]])}"
                for s in schemes
            ]
            + [parameters(per_scheme[schemes[0]][0])]
        )
    names = {"top-half": "top half observed", "random": "random half observed"}
    lookup = markdown(["method", *(names.get(s, s) for s in schemes), "parameters"], body)
    line = provenance_line(
        "results/digits/seed-*/summary.json", [s["provenance"] for s in summaries]
    )
    return mixture + "\n\n" + line, lookup + "\n\n" + line


def sla_table(results: Path) -> str:
    summary = read(results / "sla" / "summary.json")
    rows = summary["rows"]
    depths = sorted({r["depth"] for r in rows})
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    runs = summary["runs"]
    body = []
    for key, name, digits in (
        ("accuracy", "accuracy", 2),
        ("grad_norm_first_init", "first-layer grad. norm at init", 3),
    ):
        for variant in variants:
            body.append(
                [f"{variant}: {name}"]
                + [
                    mean_cell(
                        [r[key] for r in runs if r["variant"] == variant and r["depth"] == depth],
                        digits,
                    )
                    for depth in depths
                ]
            )
    seeds = summary["settings"]["seeds"]
    note = f"Seeds {', '.join(map(str, seeds))} per cell, mean ± 2 SE"
    line = provenance_line("results/sla/summary.json", [summary["provenance"]], note)
    return markdown(["depth", *map(str, depths)], body) + "\n\n" + line


SGPA_COLUMNS = {
    "digits": (
        ("accuracy", "acc"),
        ("nll", "NLL"),
        ("brier", "Brier"),
        ("ece", "ECE"),
        ("mce", "MCE"),
        ("ece_all", "ECE all"),
        ("ood_auroc_rotated", "AUROC rotated"),
        ("ood_auroc_noise", "AUROC noise"),
        ("ood_auroc_heldout", "AUROC held-out 8, 9"),
        ("rotated_accuracy", "acc rotated"),
        ("seconds", "s"),
    ),
    "sequence": (
        ("accuracy", "acc"),
        ("nll", "NLL"),
        ("ece", "ECE"),
        ("ece_all", "ECE all"),
        ("true_kl", "KL(p*‖p̂)"),
        ("true_abs_error", "\\|p̂ − p*\\|"),
        ("heldout_words_true_kl", "KL held-out words"),
        ("longer_true_kl", "KL longer"),
        ("ood_auroc_heldout_words", "AUROC held-out words"),
        ("ood_auroc_longer", "AUROC longer"),
        ("seconds", "s"),
    ),
}


def sgpa_bayes_row(summary: dict[str, Any]) -> dict[str, list[float]]:
    """The Bayes posterior's own metrics on each seed's generated test set (sequence task)."""
    from pyro_attention.diagnostics.calibration import classification_metrics
    from pyro_attention.experiments.compare_sgpa import SGPASettings, make_task

    options = dict(summary["settings"])
    options["heldout_classes"] = tuple(options.get("heldout_classes", ()))
    settings = SGPASettings(**options)
    per_seed: dict[str, list[float]] = {"true_kl": [], "true_abs_error": []}
    for seed in summary["seeds"]:
        test = make_task("sequence", seed, settings).test
        for key, value in classification_metrics(test.true_probs, test.labels).items():
            per_seed.setdefault(key, []).append(value)
        per_seed["true_kl"].append(0.0)
        per_seed["true_abs_error"].append(0.0)
    return per_seed


def sgpa_table(results: Path, task: str) -> str:
    summary = read(results / f"sgpa-{task}" / "summary.json")
    columns = SGPA_COLUMNS[task]
    per_method = by_method([summary])
    body = []
    for method, seeds in per_method.items():
        body.append(
            [method]
            + [
                mean_cell([r.get(key) for r in seeds], 0 if key == "seconds" else 3)
                for key, _ in columns
            ]
        )
    if task == "sequence":
        bayes = sgpa_bayes_row(summary)
        body.append(["Bayes p*"] + [mean_cell(bayes.get(key, []), 3) for key, _ in columns])
    failed = [f"{r['method']} seed {r['seed']}: {r['status']}" for r in summary["results"]]
    failed = [f for f, r in zip(failed, summary["results"], strict=True) if r["status"] != "ok"]
    note = ("Not ok: " + "; ".join(failed)) if failed else ""
    line = provenance_line(
        f"results/sgpa-{task}/summary.json",
        [summary["provenance"]],
        note,
    )
    return markdown(["method", *(name for _, name in columns)], body) + "\n\n" + line


def sbc_table(results: Path) -> str:
    summary = read(results / "sbc-gmm" / "sbc.json")
    statistics = summary["statistics"]
    body = []
    for method, entry in summary["methods"].items():
        stats = entry["statistics"]
        worst = min(statistics, key=lambda s: stats[s]["p_value"])
        failing = [s for s in statistics if stats[s]["p_value"] < entry["threshold"]]
        body.append(
            [
                f"`{method}`",
                str(entry["replications"]),
                f"{entry['draws']} / {entry['bins']}",
                f"{stats[worst]['p_value']:.2g} ({worst})",
                ", ".join(failing) if failing else "none",
                "**passes**" if entry["passed"] else "fails",
            ]
        )
    header = [
        "method",
        "replications",
        "draws / bins",
        "smallest p (statistic)",
        "statistics below the threshold",
        "verdict",
    ]
    model = summary["model"]
    threshold = next(iter(summary["methods"].values()))["threshold"]
    note = (
        f"K = {model['components']}, D = {model['dim']}, N = {model['points']}, "
        f"{model['covariance_type']} covariance; χ² test per statistic at "
        f"{threshold:.2g} (0.01 / {len(statistics)})"
    )
    line = provenance_line("results/sbc-gmm/sbc.json", [summary["provenance"]], note)
    return markdown(header, body) + "\n\n" + line


def _ratio_range(values: Sequence[float]) -> str:
    low, high = min(values), max(values)
    return f"{low:.2f}×" if f"{low:.2f}" == f"{high:.2f}" else f"{low:.2f}–{high:.2f}×"


def performance_table(results: Path) -> str:
    """The benchmarks' ratios against the reference each measures in the same run."""
    bench = results / "bench"
    cavi = read(bench / "cavi_sklearn.json")
    fits = cavi["fits"]
    args = cavi["args"]
    overhead = read(bench / "pyro_overhead.json")
    fit_ratios = [r["ratio_fit_torch"] for r in overhead["results"]]
    svi_ratios = [r["ratio_svi_torch"] for r in overhead["results"]]
    jit_ratios = [r["ratio_jit_torch"] for r in overhead["results"]]
    seq = read(bench / "seq2seq_step_large.json")
    cpu = seq["devices"]["cpu"]
    seq_rows = {  # the rows at the run's emission chunk size (exact unchunked is extra)
        row["method"]: row
        for row in cpu["results"]
        if row.get("ms_per_step") and row["emission_chunk_size"] == seq["emission_chunk_size"]
    }
    soft = seq_rows["soft"]["ms_per_step"]
    mixture = read(bench / "mixture_attention.json")["rows"]
    memory = read(bench / "eval_memory.json")
    biggest = max(row["n"] for row in memory["rows"])
    peaks = {row["variant"]: row["peak_mb"] for row in memory["rows"] if row["n"] == biggest}

    def median(values: Sequence[float]) -> float:
        ordered = sorted(values)
        mid = len(ordered) // 2
        return ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])

    def cavi_ratio(fit: dict[str, Any]) -> str:  # the median of the rounds, and their range
        rounds = fit.get("time_per_iter_ratio_each_round") or []
        spread = f" (rounds {_ratio_range(rounds)})" if len(rounds) > 1 else ""
        return f"{fit['time_per_iter_ratio_sklearn_over_this']:.2f}×{spread}"

    def seq_ratio(label: str) -> str:
        return f"{seq_rows[label]['ms_per_step'] / soft:.2f}×" if label in seq_rows else "–"

    body = [
        [
            f"CAVI, {int(args['n']):,} × {args['dim']}, K = {args['components']}, full covariance",
            "scikit-learn's `BayesianGaussianMixture`, same start, same iterations",
            f"{cavi_ratio(fits['ours f64'])} faster per iteration; float32 data "
            f"{cavi_ratio(fits['ours f32'])}",
            "≥ 3× faster",
        ],
        [
            f"`fit()`'s SVI step, GMM, {len(fit_ratios)} configurations",
            "a hand-written torch step of the same objective",
            f"median {median(fit_ratios):.1f}× ({min(fit_ratios):.1f}–{max(fit_ratios):.1f}×); "
            f"plain `SVI` {median(svi_ratios):.1f}×, `JitTraceEnum_ELBO` "
            f"{median(jit_ratios):.1f}×",
            "≤ 1.5×",
        ],
        [
            f"seq2seq step, hidden {seq['args']['hidden']}, {cpu['batch']['batch_size']} "
            f"examples of ≤ {cpu['batch']['source_length']} tokens, vocabulary "
            f"{cpu['batch']['target_vocab']:,}",
            "a soft-attention step",
            f"vi-sample {seq_ratio('vi-sample')}, vi-enum {seq_ratio('vi-enum')}, exact "
            f"{seq_ratio('exact')}",
            "vi-sample ≤ 1.5×, exact ≤ 2×",
        ],
        [
            f"`MixtureAttention`, {len(mixture)} sizes",
            "`scaled_dot_product_attention` without bias",
            f"forward {_ratio_range([r['forward_ratio'] for r in mixture])}, forward + "
            f"backward {_ratio_range([r['forward_backward_ratio'] for r in mixture])}",
            "≤ 1.1×",
        ],
        [
            f"held-out scoring, {biggest:,} points, {memory['args']['draws']} draws",
            "the same data scored whole",
            f"peak {number(peaks.get('pieces'), 0, thousands=True)} MB against "
            f"{number(peaks.get('whole'), 0, thousands=True)} MB",
            "a fixed memory budget",
        ],
    ]
    names = [
        "cavi_sklearn",
        "pyro_overhead",
        "seq2seq_step_large",
        "mixture_attention",
        "eval_memory",
    ]
    lines = [
        provenance_line(f"results/bench/{name}.json", [read(bench / f"{name}.json")["provenance"]])
        for name in names
    ]
    header = ["benchmark", "reference (same run)", "measured", "target"]
    return markdown(header, body) + "\n\n" + "\n".join(lines)


SWEEP_VARIANTS = {
    "reference": "the commands one after another in one process (no sweep)",
    "serial": "`--executor serial` (this process)",
    "local-1": "`--executor local --workers 1` (one spawned process)",
    "local-2": "`--executor local --workers 2`",
    "ray-2": "`--executor ray --workers 2` (a local Ray instance)",
}


def sweep_table(results: Path) -> str:
    """Cells per minute of each executor against the cells run one after another."""
    figures = read(results / "bench" / "sweep_throughput.json")
    rows = [
        [
            SWEEP_VARIANTS.get(name, name),
            str(row["workers"]),
            number(row["wall_seconds"], 1),
            number(row["cells_per_minute"], 1),
            f"{row['speedup']:.2f}×",
            "–" if name == "reference" else number(row["overhead_per_cell_seconds"], 2),
        ]
        for name, row in figures["variants"].items()
    ]
    table = markdown(
        ["how", "workers", "wall s", "cells / min", "speed-up", "overhead / cell, s"], rows
    )
    note = (
        f"{figures['cells']} cells of `{figures['cell_command']}`, one thread each; median of "
        f"{figures['rounds']} round(s), the variants' order rotating"
    )
    line = provenance_line(
        "results/bench/sweep_throughput.json", [figures["provenance"]], note=note
    )
    return f"{table}\n\n{line}"


def tables(results: Path) -> dict[str, Callable[[], str]]:
    """Every generated table by its marker name (built lazily: some read a lot)."""
    return {
        "gmm": lambda: gmm_table(results),
        "alignment-dates": lambda: alignment_table(results, "dates"),
        "alignment-translation": lambda: alignment_table(results, "translation"),
        "alignment-elpd": lambda: alignment_elpd_table(results),
        "alignment-priors": lambda: alignment_priors_table(results),
        "alignment-chain-cost": lambda: alignment_chain_table(results),
        "digits-mixture": lambda: digits_tables(results)[0],
        "digits-lookup": lambda: digits_tables(results)[1],
        "sla": lambda: sla_table(results),
        "sgpa-digits": lambda: sgpa_table(results, "digits"),
        "sgpa-sequence": lambda: sgpa_table(results, "sequence"),
        "sbc": lambda: sbc_table(results),
        "performance": lambda: performance_table(results),
        "sweep-throughput": lambda: sweep_table(results),
    }


# ----------------------------------------------------------------------------- the README
MARKER = re.compile(
    r"(<!-- table:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /table:(?P=name) -->)", re.S
)


def render(readme: str, results: Path) -> str:
    """``readme`` with every marked table regenerated from ``results``."""
    makers = tables(results)
    names = [m["name"] for m in MARKER.finditer(readme)]
    unknown = sorted(set(names) - set(makers))
    if unknown:
        raise ValueError(f"README marks unknown tables {unknown}; known: {sorted(makers)}")

    def replace(match: re.Match[str]) -> str:
        return f"{match[1]}{makers[match['name']]()}\n{match[4]}"

    return MARKER.sub(replace, readme)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", type=Path, default=REPO / "README.md")
    parser.add_argument("--results", type=Path, default=REPO / "results")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", action="store_true", help="rewrite the tables in the README")
    action.add_argument("--print", metavar="TABLE", help="print one table")
    args = parser.parse_args(argv)
    if args.print:
        print(tables(args.results)[args.print]())
        return 0
    before = args.readme.read_text()
    after = render(before, args.results)
    if args.write:
        args.readme.write_text(after)
        print(f"wrote {len(MARKER.findall(after))} tables to {args.readme}")
        return 0
    if before != after:
        diff = difflib.unified_diff(
            before.splitlines(), after.splitlines(), "README.md", "from results/", lineterm=""
        )
        print("\n".join(diff))
        print("\nthe README's tables differ from results/: python scripts/readme_tables.py --write")
        return 1
    print("the README's tables match results/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
