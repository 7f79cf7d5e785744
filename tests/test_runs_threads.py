"""``--threads``: chosen for the run (auto follows the load), set where the process is ours,
restored after a run, kept by a resume; the busy note."""

from __future__ import annotations

import pytest
import torch

from hessfree.errors import InputError
from hessfree.runs import threads
from hessfree.runs.cli import main
from hessfree.runs.results import read_results
from hessfree.runs.trainer import RunSpec, resume, train


@pytest.fixture
def machine(monkeypatch):
    """A machine of ``cores`` cores at one-minute load ``load``; OMP_NUM_THREADS unset."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)

    def set_(cores: int, load: float | None) -> None:
        monkeypatch.setattr(threads, "cores", lambda: cores)
        monkeypatch.setattr(threads, "load", lambda: load)

    return set_


@pytest.mark.parametrize("cores,load,share,expected", [
    (2, 0.1, 1, 2),      # idle: every core
    (2, 0.9, 1, 1),      # one core busy: the other
    (2, 9.9, 1, 1),      # oversubscribed: one thread (benchmarks/RESULTS.md, "Threads")
    (8, 2.2, 1, 6),
    (8, 0.0, 2, 4),      # reproduce --jobs 2 shares the free cores
    (2, 0.0, 4, 1),      # never below one
    (4, None, 1, 4),     # no load average: every core
])
def test_auto_takes_the_cores_nobody_else_uses(machine, cores, load, share, expected):
    machine(cores, load)
    chosen = threads.choose("auto", share=share)
    assert chosen.n == expected
    assert chosen.why.startswith("auto:") and f"on {cores} core" in chosen.why


def test_an_explicit_choice_wins(machine, monkeypatch):
    machine(2, 9.9)
    assert threads.choose(2) == threads.Threads(2, "--threads 2")
    assert threads.choose("3").n == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's own setting is a choice too
    assert threads.choose("auto") == threads.Threads(2, "OMP_NUM_THREADS=2")
    assert threads.choose(None).n == 2


@pytest.mark.parametrize("bad", [0, -1, "x", "1.5", 2.0])
def test_bad_thread_counts_are_refused(bad):
    with pytest.raises(InputError, match="--threads"):
        threads.choose(bad)


def test_using_restores_the_previous_count():
    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    with threads.using(other):
        assert torch.get_num_threads() == other
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), threads.using(other):
        raise RuntimeError("the block failed")
    assert torch.get_num_threads() == before


def test_busy_says_when_the_load_exceeds_the_cores(machine):
    machine(2, 9.9)
    assert threads.busy(1) == "busy: load 9.9 on 2 cores"
    machine(2, 2.1)
    assert threads.busy(1) == ""  # within the margin: not called busy
    machine(2, None)
    assert threads.busy(1) == ""


def test_a_run_sets_its_threads_records_them_and_restores_the_host(tmp_path, machine):
    machine(2, 9.9)  # busy: auto takes 1
    before = torch.get_num_threads()
    path = train(RunSpec(experiment="toy-quartic", optimizer="nag", steps=3, out=str(tmp_path),
                         quiet=True))
    assert torch.get_num_threads() == before
    res = read_results(path)
    assert res.attrs["threads"] == 1 and res.attrs["threads_chosen"].startswith("auto: load 9.9")
    # a resume keeps the run's threads (auto would now take 2), so its trajectory is the one
    # an uninterrupted run takes; a number given on resume is applied and recorded
    machine(2, 0.0)
    resume(path.parent, steps=5, quiet=True)
    res = read_results(path)
    assert res.attrs["threads"] == 1 and res.attrs["resumes"][-1]["threads"] == 1
    assert "kept on resume" in res.attrs["threads_chosen"]
    resume(path.parent, steps=6, quiet=True, threads=2)
    assert read_results(path).attrs["resumes"][-1]["threads"] == 2
    assert torch.get_num_threads() == before


def test_the_command_line_takes_threads_and_refuses_bad_ones(tmp_path, capsys):
    assert main(["train", "toy-quartic", "--optimizer", "nag", "--steps", "2", "--quiet",
                 "--out", str(tmp_path), "--threads", "1"]) == 0
    assert main(["train", "toy-quartic", "--optimizer", "nag", "--steps", "2", "--quiet",
                 "--out", str(tmp_path), "--threads", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--threads: expected an integer >= 1, got 0" in err
    assert "--threads N|auto" in _help("check-products", capsys)
    assert "--threads THREADS" in _help("demo", capsys)  # pinned: the same digits run to run


def _help(command: str, capsys) -> str:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    return capsys.readouterr().out
