"""Prompt specs from the command line: weights, colons inside texts, and clear usage errors."""

import math

import pytest

from services.cli.main import main
from services.cli.prompts import PromptSpecError, audio_prompt, split_weight, text_prompt


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("synthwave", ("synthwave", None)),
        ("disco:0.7", ("disco", 0.7)),
        ("funk:3", ("funk", 3.0)),
        ("live at 5:30 am", ("live at 5:30 am", None)),  # "30 am" is no number: stays text
        ("at 5:30", ("at 5", 30.0)),  # the last colon splits when a number follows
        ("at 5:30:1.5", ("at 5:30", 1.5)),
        ("trailing colon:", ("trailing colon:", None)),
        ("zero:0", ("zero", 0.0)),
        ("sci:1e-1", ("sci", 0.1)),
    ],
)
def test_split_weight(spec, expected):
    source, weight = split_weight(spec)
    assert source == expected[0]
    if expected[1] is None:
        assert weight is None
    else:
        assert math.isclose(weight, expected[1])


@pytest.mark.parametrize("spec", ["disco:-0.5", "disco:nan", "disco:inf", "disco:1e999"])
def test_bad_weights_are_refused(spec):
    with pytest.raises(PromptSpecError, match="weight must be a finite number >= 0"):
        split_weight(spec)


def test_text_prompt_sets_weight_only_when_given():
    weighted = text_prompt("disco:0.25")
    assert weighted.text == "disco" and weighted.HasField("weight")
    assert weighted.weight == pytest.approx(0.25)
    plain = text_prompt("disco")
    assert plain.text == "disco" and not plain.HasField("weight")


@pytest.mark.parametrize("spec", ["", "   ", ":0.5"])
def test_empty_text_is_refused(spec):
    with pytest.raises(PromptSpecError, match="empty"):
        text_prompt(spec)


def test_audio_prompt_reads_the_file_and_its_weight(tmp_path):
    clip = tmp_path / "clip:take2.ogg"  # a colon in the file name is kept
    clip.write_bytes(b"OggS fake bytes")
    prompt = audio_prompt(f"{clip}:0.3")
    assert prompt.audio == b"OggS fake bytes"
    assert prompt.weight == pytest.approx(0.3)
    assert audio_prompt(str(clip)).audio == b"OggS fake bytes"


def test_audio_prompt_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(PromptSpecError, match="cannot read audio prompt .*nope.wav"):
        audio_prompt(str(tmp_path / "nope.wav"))


@pytest.mark.parametrize(
    "flag, spec, message",
    [
        ("--prompt", "disco:-1", "weight must be a finite number >= 0"),
        ("--prompt", ":2", "prompt text is empty"),
        ("--audio-prompt", "/no/such/file.wav:0.5", "cannot read audio prompt"),
    ],
)
def test_bad_prompts_are_usage_errors(capsys, flag, spec, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["stream", flag, spec, "--seconds", "2"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and message in err
    assert "Traceback" not in err
