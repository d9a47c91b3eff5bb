"""Every numeric option of the command line is checked before any work, naming the flag; an
option that the chosen comparison does not read is refused; the method options reach the
methods of every comparison."""

import argparse

import pytest

from pyro_attention import cli
from pyro_attention.cli import main

GMM = ["compare", "gmm", "--methods", "cavi"]
ALIGNMENT = ["compare", "alignment", "--methods", "soft"]
DIGITS = ["compare", "digits", "--methods", "em"]
SLA = ["sla", "--depths", "1", "--seeds", "0"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([*GMM, "--methods", ""], "--methods '' names no method"),
        ([*GMM, "--methods", "cavi,em,cavi"], "cavi named twice"),
        ([*GMM, "--device", "nonsense"], "--device 'nonsense' is not a torch device"),
        ([*GMM, "--device", "mps"], "--device 'mps': this command runs on cpu or cuda"),
        ([*GMM, "--lr", "0"], "--lr must be a finite number > 0, got 0.0"),
        ([*ALIGNMENT, "--methods", "soft,exact,soft"], "soft named twice"),
        # options of methods that are not run are checked too
        ([*GMM, "--lr", "-1"], "--lr must be a finite number > 0, got -1.0"),
        ([*GMM, "--lr", "nan"], "--lr must be a finite number > 0, got nan"),
        ([*GMM, "--steps", "-1"], "--steps must be an integer >= 1, got -1"),
        ([*GMM, "--steps", "0"], "--steps must be an integer >= 1, got 0"),
        ([*GMM, "--num-samples", "-3"], "--num-samples must be an integer >= 1, got -3"),
        ([*GMM, "--subsample-size", "0"], "--subsample-size must be an integer >= 1, got 0"),
        ([*GMM, "--components", "0"], "--components must be an integer >= 1, got 0"),
        ([*GMM, "--nuts-samples", "3"], "--nuts-samples must be an integer >= 4"),
        ([*GMM, "--nuts-chains", "0"], "--nuts-chains must be an integer >= 1, got 0"),
        ([*GMM, "--nuts-warmup", "-1"], "--nuts-warmup must be an integer >= 0, got -1"),
        ([*GMM, "--temperature", "inf"], "--temperature must be a finite number > 0, got inf"),
        ([*GMM, "--rws-particles", "0"], "--rws-particles must be an integer >= 1, got 0"),
        ([*GMM, "--pretrain-fraction", "1"], "--pretrain-fraction must lie in [0, 1), got 1.0"),
        ([*GMM, "--seed", "-1"], "--seed must be an integer in [0, 2**32 - 1], got -1"),
        ([*GMM, "--seed", str(2**32)], "--seed must be an integer in [0, 2**32 - 1]"),
        ([*GMM, "--threads", "0"], "--threads must be an integer >= 1, got 0"),
        ([*GMM, "--epochs", "3"], "--epochs does not apply to compare gmm"),
        ([*GMM, "--task", "dates"], "--task does not apply to compare gmm"),
        ([*GMM, "--knn", "3"], "--knn does not apply to compare gmm"),
        ([*GMM, "--device", "cuda:99"], "--device 'cuda:99'"),
        ([*ALIGNMENT, "--batch-size", "0"], "--batch-size must be an integer >= 1, got 0"),
        ([*ALIGNMENT, "--epochs", "0"], "--epochs must be a finite number > 0, got 0.0"),
        ([*ALIGNMENT, "--epochs", "-1"], "--epochs must be a finite number > 0, got -1.0"),
        ([*ALIGNMENT, "--pretrain-fraction", "-0.1"], "--pretrain-fraction must lie in [0, 1)"),
        ([*ALIGNMENT, "--temperature", "0"], "--temperature must be a finite number > 0"),
        ([*ALIGNMENT, "--rws-particles", "0"], "--rws-particles must be an integer >= 1"),
        ([*ALIGNMENT, "--emission-chunk-size", "0"], "--emission-chunk-size must be an integer"),
        ([*ALIGNMENT, "--data-seed", "-2"], "--data-seed must be an integer in [0, 2**32 - 1]"),
        ([*ALIGNMENT, "--components", "3"], "--components does not apply to compare alignment"),
        ([*ALIGNMENT, "--subsample-size", "3"], "--subsample-size does not apply to compare"),
        ([*ALIGNMENT, "--nuts-chains", "3"], "--nuts-chains does not apply to compare alignment"),
        ([*DIGITS, "--covariance", "diag"], "--covariance does not apply to compare digits"),
        ([*DIGITS, "--transformer-steps", "-1"], "--transformer-steps must be an integer >= 0"),
        ([*DIGITS, "--knn", "0"], "--knn must be an integer >= 1, got 0"),
        ([*DIGITS, "--knn", "100000"], "--knn 100000 exceeds the 1297 training images"),
        ([*DIGITS, "--no-lookup", "--knn", "3"], "--knn sets the lookup, which --no-lookup"),
        ([*ALIGNMENT, "--steps", "3", "--epochs", "5"], "--steps and --epochs both set"),
        ([*SLA, "--variants", "plain,plain"], "variant(s) plain named twice"),
        ([*SLA, "--steps", "0"], "--steps must be an integer >= 1, got 0"),
        ([*SLA, "--lr", "-1"], "--lr must be a finite number > 0, got -1.0"),
        ([*SLA, "--hops", "0"], "--hops must be an integer >= 1, got 0"),
        (["sla", "--depths", "0", "--seeds", "0"], "--depths must list integers >= 1"),
        (["sla", "--depths", "1", "--seeds", ""], "--seeds must list integers >= 0"),
        ([*SLA, "--variants", ","], "--variants names no variant"),
    ],
)
def test_bad_options_refused_before_any_work(argv, message, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([*argv, "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    assert not out.exists() or not any(out.iterdir())


def _methods(argv: list[str], model: str, **defaults: object) -> dict[str, object]:
    args = cli._parser().parse_args(["compare", model, *argv])
    methods = cli._methods(args, ["gumbel", "rws", "dirichlet", "nuts"], **defaults)
    return {m.name: m for m in methods}


def test_method_options_reach_the_methods():
    gmm = _methods([], "gmm", num_steps=1000)
    assert gmm["gumbel"].temperature == 0.5 and gmm["rws"].num_particles == 10
    assert gmm["dirichlet"].pretrain_steps == 0 and gmm["nuts"].num_samples == 150
    argv = ["--temperature", "0.9", "--rws-particles", "3", "--pretrain-fraction", "0.25"]
    given = _methods([*argv, "--nuts-samples", "20", "--nuts-chains", "1"], "gmm", num_steps=400)
    assert given["gumbel"].temperature == 0.9 and given["rws"].num_particles == 3
    assert given["dirichlet"].pretrain_steps == 100
    assert given["nuts"].num_samples == 20 and given["nuts"].num_chains == 1
    alignment = _methods(
        [],
        "alignment",
        num_steps=100,
        rws_particles=5,
        pretrain_fraction=0.3,
        extra={"rws": {"local": True}},
    )
    assert alignment["rws"].num_particles == 5 and alignment["rws"].local
    assert alignment["dirichlet"].pretrain_steps == 30


def test_every_option_is_read_by_some_comparison():
    """The option tables name real flags: a renamed flag cannot slip past the checks."""
    dests = {
        action.dest
        for parser in (cli._parser()._subparsers._group_actions[0].choices.values())
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction)
    }
    named = set().union(*cli.MODEL_OPTIONS.values())
    checked = (
        cli.COUNT_OPTIONS
        | cli.NON_NEGATIVE_OPTIONS
        | cli.POSITIVE_OPTIONS
        | set(cli.INTERVAL_OPTIONS)
        | cli.SEED_OPTIONS
    )
    compare_dests = {
        a.dest for a in cli._parser()._subparsers._group_actions[0].choices["compare"]._actions
    }
    assert named <= compare_dests | {"command"}
    assert compare_dests - {"help"} <= named
    assert checked <= dests
