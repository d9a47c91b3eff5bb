"""The fit loop over mini-batches: order, epochs, token counts, errors, checkpoint/resume."""

import pyro
import pytest
import torch

from pyro_attention.data import get_task, load_gmm2d, make_alignment_dataset
from pyro_attention.infer import fit, get_method
from pyro_attention.infer.fit import batch_stream
from pyro_attention.models import BayesianGMM, LatentAlignmentSeq2Seq


def tiny(device, num_train=6):
    task = get_task("reverse", alphabet_size=5, min_length=2, max_length=4)
    data = make_alignment_dataset(task, num_train=num_train, num_valid=1, num_test=1, seed=3)
    model = LatentAlignmentSeq2Seq(len(data.source_vocab), len(data.target_vocab), 4, 6)
    model.to(device=device, dtype=torch.float64)
    return model, data


def rows(batch, start, stop):
    """Examples ``start:stop`` of an AlignmentBatch."""
    return type(batch)(*(field[start:stop] for field in batch))


def three_batches(data, device):
    """Batches of 1, 2 and 3 examples, so every batch has its own number of target tokens."""
    train = data.tensors("train", device=device)
    batches = [rows(train, 0, 1), rows(train, 1, 3), rows(train, 3, 6)]
    tokens = [int(b.target_mask.sum()) for b in batches]
    assert len(set(tokens)) == 3
    return train, batches, tokens


class Recording:
    """A re-iterable list of batches that records which batch each step got."""

    def __init__(self, batches):
        self.batches = batches
        self.given: list[int] = []

    def __iter__(self):
        for n, batch in enumerate(self.batches):
            self.given.append(n)
            yield batch


def test_batch_stream_cycles_epochs_and_skips_the_start():
    stream = batch_stream(["a", "b", "c"])
    assert [next(stream) for _ in range(7)] == list("abcabca")
    resumed = batch_stream(["a", "b", "c"], start=4)
    assert [next(resumed) for _ in range(4)] == list("bcab")
    epochs = []

    def batches(epoch):
        epochs.append(epoch)
        return [f"{epoch}{x}" for x in "xy"]

    stream = batch_stream(batches, start=3)
    assert [next(stream) for _ in range(3)] == ["1y", "2x", "2y"]
    assert epochs == [0, 1, 2]


def test_steps_walk_through_a_list_of_batches(device):
    model, data = tiny(device)
    train, batches, tokens = three_batches(data, device)
    recording = Recording(batches)
    result = fit(model, train, "exact", batches=recording, num_steps=7, seed=0, progress=False)
    order = [0, 1, 2, 0, 1, 2, 0]
    assert recording.given == order
    assert result.steps == 7 and len(result.losses) == 7
    assert result.extra["step_points"] == [tokens[i] for i in order]
    assert result.points_seen == sum(tokens[i] for i in order)
    assert result.points_seen != 7 * model.num_points(train)  # not the whole set per step
    assert result.samples_per_second == pytest.approx(result.points_seen / result.seconds)


def test_each_step_uses_its_batch(device):
    """The loss of each step is that of its own batch (the same parameters, one step each)."""
    model, data = tiny(device)
    train, batches, _ = three_batches(data, device)
    stepped = fit(model, train, "exact", batches=batches, num_steps=3, lr=1e-12, progress=False)
    for loss, batch in zip(stepped.losses, batches, strict=True):
        # with a vanishing learning rate the parameters stay put: each loss is -log p(batch)
        whole = fit(model, batch, "exact", num_steps=1, lr=1e-12, progress=False)
        assert loss == pytest.approx(whole.losses[0], rel=1e-6)


def test_a_callable_gets_the_epoch_numbers(device):
    model, data = tiny(device)
    train = data.tensors("train", device=device)
    epochs = []

    def batches(epoch):
        epochs.append(epoch)
        return data.batches("train", 2, shuffle=True, seed=epoch, device=device)

    result = fit(model, train, "exact", batches=batches, num_steps=7, seed=0, progress=False)
    assert epochs == [0, 1, 2]  # 3 batches an epoch: step 7 opens the third epoch
    expected = [
        int(b.target_mask.sum())
        for epoch in range(3)
        for b in data.batches("train", 2, shuffle=True, seed=epoch)
    ][:7]
    assert result.extra["step_points"] == expected
    assert result.points_seen == sum(expected)


def test_without_batches_every_step_sees_all_the_data(device):
    model, data = tiny(device)
    train = data.tensors("train", device=device)
    result = fit(model, train, "exact", num_steps=2, progress=False)
    assert result.extra["step_points"] == [model.num_points(train)] * 2
    assert result.points_seen == 2 * int(train.target_mask.sum())


def test_empty_batches_refused(device):
    model, data = tiny(device)
    train = data.tensors("train", device=device)
    with pytest.raises(ValueError, match="batches gave no data in epoch 0"):
        fit(model, train, "exact", batches=[], num_steps=2, progress=False)
    with pytest.raises(ValueError, match="batches"):
        fit(model, train, "exact", batches=lambda epoch: iter(()), num_steps=2, progress=False)
    # an iterable that runs dry after one epoch (a generator is not re-iterable)
    once = iter([train])
    with pytest.raises(ValueError, match="batches gave no data in epoch 1"):
        fit(model, train, "exact", batches=once, num_steps=3, progress=False)


def test_batches_and_subsample_size_refused(device):
    model, data = tiny(device)
    train = data.tensors("train", device=device)
    with pytest.raises(ValueError, match="either batches or subsample_size"):
        fit(model, train, "exact", batches=[train], subsample_size=2, num_steps=2, progress=False)


def gmm_batches(points):
    """A callable of two batches an epoch, their order reversed in odd epochs."""

    def batches(epoch):
        chunks = [points[:300], points[300:600]]
        return chunks[::-1] if epoch % 2 else chunks

    return batches


def test_checkpoint_resume_with_batches(device, tmp_path):
    """6 steps in one run = 3 steps, then a resumed run to 6 (mid-epoch, other seed)."""
    points = load_gmm2d(device=device).train
    data = points[:300]
    gmm = BayesianGMM(3, 2, "diag")
    path = tmp_path / "batches.pt"
    batches = gmm_batches(points)
    full = fit(gmm, data, "enum", batches=batches, num_steps=6, seed=1, progress=False)
    reference = {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}
    # the batches differ: the same parameters would give the same loss on both
    assert len(set(full.losses)) == 6

    pyro.clear_param_store()
    first = fit(
        gmm, data, "enum", batches=batches, num_steps=3, seed=1, progress=False, checkpoint=path
    )
    assert first.steps == 3 and first.losses == full.losses[:3]
    assert torch.load(path, weights_only=False)["points_seen"] == first.points_seen == 900
    pyro.clear_param_store()
    resumed = fit(
        gmm, data, "enum", batches=batches, num_steps=6, seed=123, progress=False, checkpoint=path
    )
    assert resumed.steps == 6
    assert resumed.losses[:3] == first.losses
    torch.testing.assert_close(torch.tensor(resumed.losses), torch.tensor(full.losses))
    for name, value in pyro.get_param_store().named_parameters():
        torch.testing.assert_close(value.detach(), reference[name])
    # the points of the earlier run are carried over; step_points are this call's steps only
    assert resumed.points_seen == full.points_seen == 6 * 300
    assert resumed.extra["step_points"] == [300] * 3


def test_resume_skips_the_batches_already_seen(device, tmp_path):
    """Resuming at step 3 of an epoch of 2 batches starts with the 2nd batch of epoch 1."""
    points = load_gmm2d(device=device).train
    gmm = BayesianGMM(3, 2, "diag")
    path = tmp_path / "skip.pt"
    seen = []

    def batches(epoch):
        for n, batch in enumerate(gmm_batches(points)(epoch)):
            seen.append((epoch, n))
            yield batch

    fit(gmm, points[:300], "enum", batches=batches, num_steps=3, progress=False, checkpoint=path)
    assert seen == [(0, 0), (0, 1), (1, 0)]
    seen.clear()
    pyro.clear_param_store()
    fit(gmm, points[:300], "enum", batches=batches, num_steps=5, progress=False, checkpoint=path)
    # epoch 0 and the first batch of epoch 1 are drawn again only to be skipped
    assert seen == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0)]


def test_checkpoint_resume_with_batches_seq2seq(device, tmp_path):
    _, data = tiny(device)

    def fresh_model():  # a resumed run starts from a newly built model (a new process)
        pyro.set_rng_seed(0)
        model, _ = tiny(device)
        return model

    train, batches, _ = three_batches(data, device)
    path = tmp_path / "seq2seq.pt"
    options = {"batches": batches, "seed": 1, "progress": False, "lr": 0.05}
    full = fit(fresh_model(), train, "exact", num_steps=6, **options)
    reference = {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}
    pyro.clear_param_store()
    fit(fresh_model(), train, "exact", num_steps=3, checkpoint=path, **options)
    pyro.clear_param_store()
    resumed = fit(fresh_model(), train, "exact", num_steps=6, checkpoint=path, **options)
    torch.testing.assert_close(torch.tensor(resumed.losses), torch.tensor(full.losses))
    for name, value in pyro.get_param_store().named_parameters():
        torch.testing.assert_close(value.detach(), reference[name])


def test_dirichlet_pretraining_counts_in_steps_and_losses(device):
    model, data = tiny(device)
    train, batches, _ = three_batches(data, device)
    method = get_method("dirichlet", pretrain_steps=2)
    result = fit(model, train, method, batches=batches, num_steps=5, seed=0, progress=False)
    assert result.steps == 5 and len(result.losses) == 5
    assert result.extra["pretrain_steps"] == 2
    assert all(torch.isfinite(torch.tensor(result.losses)))
    assert result.points_seen == sum(result.extra["step_points"])  # pretraining counted too
    without = fit(model, train, "dirichlet", batches=batches, num_steps=5, progress=False)
    assert without.steps == 5 and "pretrain_steps" not in without.extra


def test_dirichlet_step_points_cover_the_pretraining(device):
    model, data = tiny(device)
    train, batches, tokens = three_batches(data, device)
    method = get_method("dirichlet", pretrain_steps=2)
    result = fit(model, train, method, batches=batches, num_steps=5, seed=0, progress=False)
    assert len(result.extra["step_points"]) == result.steps
    assert sum(result.extra["step_points"]) == result.points_seen
    # the Dirichlet phase goes on where the pre-training stopped, not at the first batch
    assert result.extra["step_points"] == [tokens[0], tokens[1], tokens[2], tokens[0], tokens[1]]


def test_gmm_batches_of_any_size(device):
    """The guide's plate follows each batch: batches of 200 and 350 points."""
    points = load_gmm2d(device=device).train
    gmm = BayesianGMM(3, 2, "diag")
    batches = [points[:200], points[200:550]]
    result = fit(gmm, points[:300], "enum", batches=batches, num_steps=4, seed=0, progress=False)
    assert result.extra["step_points"] == [200, 350, 200, 350]
    assert result.points_seen == 1100
    # each loss is over its own batch: per point they agree, in total they scale with the size
    per_point = [v / n for v, n in zip(result.losses, result.extra["step_points"], strict=True)]
    assert max(per_point) < 1.3 * min(per_point)
    assert result.losses[1] > 1.4 * result.losses[0] and result.losses[3] > 1.4 * result.losses[2]


@pytest.mark.parametrize("method", ["reinforce", "vi-enum", "gumbel"])
def test_per_point_guides_refuse_batches(device, method):
    points = load_gmm2d(device=device).train
    with pytest.raises(ValueError, match="encoder"):
        fit(BayesianGMM(3, 2, "diag"), points[:300], method, batches=[points[:100]], num_steps=1)
