"""Thread count chosen by measurement."""

from __future__ import annotations

import torch

from tocha.engine.threads import candidates, choose_threads, training_step


class FakeMachine:
    """A step whose duration depends on torch's thread count, on a clock the test controls."""

    def __init__(self, seconds_by_threads: dict[int, float]) -> None:
        self.cost, self.now, self.calls = seconds_by_threads, 0.0, 0

    def clock(self) -> float:
        return self.now

    def step(self) -> None:
        self.calls += 1
        self.now += self.cost[torch.get_num_threads()]


def test_candidates_are_powers_of_two_and_all_cores():
    assert candidates(1) == [1]
    assert candidates(2) == [1, 2]
    assert candidates(6) == [1, 2, 4, 6]
    assert candidates(8) == [1, 2, 4, 8]


def test_picks_the_fastest_and_restores_the_thread_count():
    before = torch.get_num_threads()
    machine = FakeMachine({1: 0.004, 2: 0.002, 4: 0.003})
    threads, reason = choose_threads(machine.step, 4, clock=machine.clock)
    assert threads == 2
    assert "1: 4.00" in reason and "2: 2.00" in reason and "4: 3.00" in reason
    assert torch.get_num_threads() == before


def test_prefers_fewer_threads_when_within_noise():
    machine = FakeMachine({1: 0.00101, 2: 0.00100})
    assert choose_threads(machine.step, 2, clock=machine.clock)[0] == 1


def test_tiny_model_can_win_with_one_thread():
    machine = FakeMachine({1: 0.001, 2: 0.0015})
    assert choose_threads(machine.step, 2, clock=machine.clock)[0] == 1


def test_slow_steps_use_every_core_without_measuring():
    machine = FakeMachine({1: 2.0, 2: 1.0})
    threads, reason = choose_threads(machine.step, 2, clock=machine.clock)
    assert threads == 2 and "compute-bound" in reason
    assert machine.calls == 4  # two warm-ups and two timed steps (slow both times), nothing more


def test_training_step_leaves_the_model_untouched():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    step = training_step(model, torch.randn(8, 4), torch.randint(0, 3, (8,)), torch.nn.functional.cross_entropy)
    step(), step()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_probing_does_not_move_the_global_rng():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 3))
    step = training_step(model, torch.randn(8, 4), torch.randint(0, 3, (8,)), torch.nn.functional.cross_entropy)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    step(), step()
    assert torch.equal(torch.rand(3), expected)
