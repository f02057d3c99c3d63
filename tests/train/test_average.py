"""The weight average of ``--ema`` (acdctool.train.average)."""

from __future__ import annotations

import pytest
import torch

from acdctool.errors import BadInputError
from acdctool.train.average import WeightAverage


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))


def test_update_follows_the_warmed_up_recurrence_and_tracks_buffers():
    net = _net()
    avg = WeightAverage(net, decay=0.9)
    expected = {k: v.detach().clone() for k, v in net.state_dict().items() if v.is_floating_point()}
    for n in range(1, 6):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.1 * n)
        net.train()(torch.randn(4, 3))  # moves the batch-norm running statistics
        avg.update()
        d = min(0.9, (1 + n) / (10 + n))
        live = net.state_dict()
        for k in expected:
            expected[k] = d * expected[k] + (1 - d) * live[k]
    state = avg.state_dict()
    assert set(state["tensors"]) == set(expected) and "1.running_mean" in expected
    assert "1.num_batches_tracked" not in state["tensors"]  # integer buffers follow the model
    for k, v in expected.items():
        torch.testing.assert_close(state["tensors"][k], v, rtol=1e-6, atol=1e-6)


def test_applied_swaps_in_the_average_and_restores_the_live_weights_even_on_error():
    net = _net()
    avg = WeightAverage(net, decay=0.5)
    with torch.no_grad():
        net[0].weight.add_(2.0)
    avg.update()  # d = min(0.5, 2/11): the average moves 9/11 of the way
    live = net[0].weight.detach().clone()
    with avg.applied():
        torch.testing.assert_close(net[0].weight, live - 2.0 * 2 / 11)
    assert torch.equal(net[0].weight, live)
    with pytest.raises(RuntimeError), avg.applied():
        raise RuntimeError("validation failed")
    assert torch.equal(net[0].weight, live)


def test_state_round_trip_and_refusals():
    net = _net()
    avg = WeightAverage(net, decay=0.99)
    with torch.no_grad():
        net[0].bias.add_(1.0)
    avg.update()
    other = WeightAverage(_net(), decay=0.99)
    other.load_state_dict(avg.state_dict())
    assert other.updates == 1
    assert all(torch.equal(v, avg.state_dict()["tensors"][k]) for k, v in other.state_dict()["tensors"].items())
    with pytest.raises(BadInputError, match="does not fit"):
        WeightAverage(torch.nn.Linear(3, 2), 0.9).load_state_dict(avg.state_dict())
    wrong = WeightAverage(torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.BatchNorm1d(5)), 0.9)
    with pytest.raises(BadInputError, match="another shape"):
        wrong.load_state_dict(avg.state_dict())
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="decay"):
            WeightAverage(net, bad)
