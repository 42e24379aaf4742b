"""`tocha compress --goal`: the search with a stubbed timer, and goals that are refused."""

from __future__ import annotations

import pytest

from tocha.deploy import goals
from tocha.errors import UserError


def cand(name, ms, val=0.90, mb=1.0, fp32_ms=10.0):
    return goals.Candidate(name, val, val - 0.01, ms, ms, fp32_ms, mb, path=f"{name}.onnx")


REF = goals.Candidate("fp32", 0.90, 0.89, 10.0, 10.0, 10.0, 4.0, path="fp32.onnx", kept=True)


def builders(*cands):
    return [(c.name, lambda c=c: c) for c in cands]


def test_a_goal_is_met_by_the_fastest_candidate_within_the_accuracy_budget():
    result = goals.search(
        goals.parse_goal("speedup=3"),
        REF,
        builders(cand("int8", 4.0), cand("pruned", 2.5, val=0.895), cand("pruned+int8", 1.0, val=0.80)),
        max_drop=1.0,
        time_budget_s=60,
        echo=lambda *_: None,
    )
    assert result.met and result.chosen.name == "pruned"
    assert "goal speedup=3 met by pruned (4.00x" in result.why
    rejected = result.candidates[-1]
    assert not rejected.kept and "costs 10.00 val accuracy points (allowed 1)" in rejected.why


def test_a_missed_goal_returns_the_best_found_and_says_why():
    result = goals.search(
        goals.parse_goal("speedup=5"),
        REF,
        builders(cand("int8", 12.0), cand("pruned", 5.0)),
        max_drop=0.5,
        time_budget_s=60,
        echo=lambda *_: None,
    )
    assert not result.met and result.chosen.name == "pruned"
    assert "goal speedup=5 missed: the best within 0.5 val points is pruned (2.00x" in result.why
    assert "not faster (0.83x)" in result.candidates[1].why


def test_the_time_budget_stops_the_search_with_finished_candidates_kept():
    clock = iter([0.0, 1.0, 30.0, 99.0])
    lines = []
    result = goals.search(
        goals.parse_goal("latency_ms=1"),
        REF,
        builders(cand("a", 5.0), cand("b", 4.0), cand("c", 0.5)),
        max_drop=1.0,
        time_budget_s=20,
        echo=lines.append,
        clock=lambda: next(clock),
    )
    assert [c.name for c in result.candidates] == ["fp32", "a"]
    assert result.stopped == "time budget" and not result.met and result.chosen.name == "a"
    assert "1 of 3 candidates tried" in result.why
    assert any("time budget" in line for line in lines)


def test_ctrl_c_keeps_every_finished_candidate():
    def interrupted():
        raise KeyboardInterrupt

    result = goals.search(
        goals.parse_goal("speedup=2"),
        REF,
        [*builders(cand("a", 4.0)), ("b", interrupted)],
        max_drop=1.0,
        time_budget_s=60,
        echo=lambda *_: None,
    )
    assert result.stopped == "interrupted" and result.met and result.chosen.name == "a"


def test_the_pareto_front_holds_what_nothing_beats_on_both_latency_and_accuracy():
    a, b, c = cand("a", 5.0, val=0.90), cand("b", 2.0, val=0.88), cand("c", 6.0, val=0.87)
    assert goals.pareto([a, b, c]) == [a, b]


@pytest.mark.parametrize(
    "text, words",
    [
        ("speedup=0", "cannot be reached"),
        ("speedup=1", "cannot be reached"),
        ("latency=3", "unknown goal"),
        ("latncy_ms=3", "did you mean 'latency_ms'"),
        ("size_mb=big", "needs a number"),
        ("speedup", "unknown goal"),
    ],
)
def test_bad_goals_are_user_errors(text, words):
    with pytest.raises(UserError, match=words):
        goals.parse_goal(text)


def test_a_goal_fp32_already_meets_says_already_met():
    with pytest.raises(UserError, match="already met: the fp32 export is 2.000 ms"):
        goals.check_not_met(goals.Goal("latency_ms", 5.0), 2.0, 1.0)
    goals.check_not_met(goals.Goal("latency_ms", 1.0), 2.0, 1.0)  # not met: nothing raised


@pytest.mark.parametrize("goal", ["speedup=0", "bogus=2"])
def test_bad_goals_exit_2_from_the_cli(tmp_path, capsys, goal):
    from tocha.cli import main as cli

    (tmp_path / "run").mkdir()
    assert cli(["compress", str(tmp_path / "run"), "--goal", goal]) == 2
    assert "--goal" in capsys.readouterr().err
