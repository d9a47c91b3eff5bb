"""Print the README's GP-attention table from a ``compare sgpa`` summary (mean ± 2 SE).

For the sequence task it adds the Bayes posterior's own row (``p̂ = p*``), recomputed from the
generated test sets of the summary's seeds.

    python scripts/sgpa_table.py results/sgpa-digits/summary.json
    python scripts/sgpa_table.py results/sgpa-sequence/summary.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

COLUMNS = {
    "digits": [
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
    ],
    "sequence": [
        ("accuracy", "acc"),
        ("nll", "NLL"),
        ("ece", "ECE"),
        ("ece_all", "ECE all"),
        ("true_kl", "KL(p*‖p̂)"),
        ("true_abs_error", "|p̂ − p*|"),
        ("heldout_words_true_kl", "KL held-out words"),
        ("longer_true_kl", "KL longer"),
        ("ood_auroc_heldout_words", "AUROC held-out words"),
        ("ood_auroc_longer", "AUROC longer"),
        ("seconds", "s"),
    ],
}


def cell(row: dict, key: str) -> str:
    if key not in row:
        return "–"
    digits = 0 if key == "seconds" else 3
    value, error = row[key], row.get(f"{key}_2se")
    text = f"{value:.{digits}f}"
    return text if error is None or error != error else f"{text} ± {error:.{digits}f}"


def bayes_row(summary: dict, columns: list, seeds: list[int]) -> str:
    """The table row of the Bayes posterior itself on each seed's test set."""
    from pyro_attention.diagnostics.calibration import classification_metrics, mean_and_error
    from pyro_attention.experiments.compare_sgpa import SGPASettings, make_task

    options = dict(summary["settings"])
    options["heldout_classes"] = tuple(options.get("heldout_classes", ()))
    settings = SGPASettings(**options)
    rows = []
    for seed in seeds:
        test = make_task("sequence", seed, settings).test
        rows.append(classification_metrics(test.true_probs, test.labels))
    row: dict = {}
    for key in rows[0]:
        row[key], row[f"{key}_2se"] = mean_and_error([r[key] for r in rows])
    row["true_kl"], row["true_abs_error"] = 0.0, 0.0
    return "| Bayes p* | " + " | ".join(cell(row, key) for key, _ in columns) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("summary", type=Path)
    args = parser.parse_args()
    summary = json.loads(args.summary.read_text())
    columns = COLUMNS[summary["task"]]
    seeds = sorted({row["seed"] for row in summary["results"]})
    print(f"{summary['task']}: seeds {seeds}, settings {summary['settings']}\n")
    print("| method | " + " | ".join(name for _, name in columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for row in summary["aggregate"]:
        print(f"| {row['method']} | " + " | ".join(cell(row, key) for key, _ in columns) + " |")
    if summary["task"] == "sequence":
        print(bayes_row(summary, columns, seeds))
    failed = [r for r in summary["results"] if r["status"] != "ok"]
    for row in failed:
        print(f"\n{row['method']} seed {row['seed']}: {row['status']}")


if __name__ == "__main__":
    main()
