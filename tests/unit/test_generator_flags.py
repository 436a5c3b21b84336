"""The generator's command line: flag combinations refused before any model loads."""

import pytest

from services.generator.__main__ import parse_args


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--random-weights", "true", "--checkpoint", "ckpt.tar"], "exclude each other"),
        (["--max-batch-size", "0"], "--max-batch-size must be in [1, 512], got 0"),
        (["--max-batch-size", "513"], "--max-batch-size must be in [1, 512], got 513"),
        (["--model", "sim", "--sim-batch-seconds", "-1"], "must be >= 0"),
        (["--stall-timeout-s", "0"], "--stall-timeout-s must be > 0"),
        (["--warm-chunk-frames", "10,4"], "chunk lengths must be in [5, 50] frames"),
        (["--warm-chunk-frames", "ten"], "not a list of integers"),
    ],
)
def test_impossible_combinations_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_random_weights_from_the_environment(monkeypatch):
    monkeypatch.setenv("MRT_RANDOM_WEIGHTS", "true")
    assert parse_args(["--model", "large"]).random_weights is True
    monkeypatch.delenv("MRT_RANDOM_WEIGHTS")
    assert parse_args([]).random_weights is False


def test_sim_cost_from_the_environment(monkeypatch):
    monkeypatch.setenv("MRT_SIM_BATCH_SECONDS", "0.6")
    monkeypatch.setenv("MRT_SIM_SESSION_SECONDS", "0.02")
    args = parse_args(["--model", "sim"])
    assert (args.sim_batch_seconds, args.sim_session_seconds) == (0.6, 0.02)


def test_warmed_chunk_lengths_from_the_flag_and_the_environment(monkeypatch):
    assert parse_args([]).warm_chunk_frames == ()
    assert parse_args(["--warm-chunk-frames", "10,25"]).warm_chunk_frames == (10, 25)
    monkeypatch.setenv("MRT_WARM_CHUNK_FRAMES", "5")
    assert parse_args([]).warm_chunk_frames == (5,)
