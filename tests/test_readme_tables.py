"""The README's measured tables are the ones ``scripts/readme_tables.py`` makes from the result
files committed in ``results/``: a hand edit of a table, or a result file re-measured without
regenerating the README, fails here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]


def test_readme_tables_match_the_result_files():
    script = load_script("readme_tables")
    readme = (ROOT / "README.md").read_text()
    assert script.render(readme, ROOT / "results") == readme, (
        "the README's tables differ from results/; python scripts/readme_tables.py shows the "
        "difference and --write regenerates them"
    )


def test_every_table_is_in_the_readme():
    script = load_script("readme_tables")
    readme = (ROOT / "README.md").read_text()
    marked = [m["name"] for m in script.MARKER.finditer(readme)]
    assert sorted(marked) == sorted(script.tables(ROOT / "results"))


def test_a_changed_result_or_table_is_caught(tmp_path):
    script = load_script("readme_tables")
    shutil.copytree(ROOT / "results" / "gmm", tmp_path / "gmm")
    readme = "intro\n<!-- table:gmm -->\nold\n<!-- /table:gmm -->\nend\n"
    rendered = script.render(readme, tmp_path)
    assert rendered != readme and rendered.startswith("intro\n") and rendered.endswith("end\n")
    assert script.render(rendered, tmp_path) == rendered  # stable
    path = tmp_path / "gmm" / "seed-0" / "summary.json"
    summary = json.loads(path.read_text())
    summary["results"][0]["heldout_log_lik"] += 0.5
    path.write_text(json.dumps(summary))
    assert script.render(rendered, tmp_path) != rendered
    summary["state"] = "interrupted"
    path.write_text(json.dumps(summary))
    with pytest.raises(ValueError, match="did not finish"):
        script.render(rendered, tmp_path)
    with pytest.raises(ValueError, match="unknown tables"):
        script.render("<!-- table:nope -->\n<!-- /table:nope -->\n", tmp_path)


def test_check_mode_exits_1_on_a_stale_readme(tmp_path, capsys):
    script = load_script("readme_tables")
    readme = tmp_path / "README.md"
    shutil.copytree(ROOT / "results" / "gmm", tmp_path / "results" / "gmm")
    readme.write_text("<!-- table:gmm -->\nstale\n<!-- /table:gmm -->\n")
    argv = ["--readme", str(readme), "--results", str(tmp_path / "results")]
    assert script.main(argv) == 1
    assert "--write" in capsys.readouterr().out
    assert script.main([*argv, "--write"]) == 0
    assert script.main(argv) == 0
