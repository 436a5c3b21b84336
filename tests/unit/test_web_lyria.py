"""Lyria RealTime messages <-> mrt.v1 messages (services/web/lyria.py)."""

from __future__ import annotations

import base64
import json

import pytest

from services.common import model_facts as facts
from services.common.proto.mrt.v1 import music_pb2
from services.web import lyria


def test_weights_are_normalized_and_texts_kept_for_filtered_prompts():
    update = lyria.prompts_request(
        {"weightedPrompts": [{"text": "techno", "weight": 3}, {"text": "piano"}]}
    )
    prompts = update.request.prompts.prompts
    assert [p.text for p in prompts] == ["techno", "piano"]
    assert [p.weight for p in prompts] == pytest.approx([0.75, 0.25])
    assert update.texts == ("techno", "piano")
    assert update.echo == {
        "weightedPrompts": [{"text": "techno", "weight": 0.75}, {"text": "piano", "weight": 0.25}]
    }


def test_an_audio_prompt_carries_its_file_bytes():
    wav = b"RIFF....WAVEfmt "
    update = lyria.prompts_request(
        {
            "weightedPrompts": [
                {"audio": {"data": base64.b64encode(wav).decode(), "name": "loop.wav"}, "weight": 1}
            ]
        }
    )
    assert update.request.prompts.prompts[0].audio == wav
    assert update.texts == ("loop.wav",)


@pytest.mark.parametrize(
    "content, reason",
    [
        ({}, "weightedPrompts list"),
        ({"weightedPrompts": []}, "at least one"),
        ({"weightedPrompts": [{"text": "a", "weight": 0}]}, "weight must be a number > 0"),
        ({"weightedPrompts": [{"text": "a", "weight": True}]}, "weight must be a number > 0"),
        ({"weightedPrompts": [{"weight": 1}]}, "needs a text"),
        ({"weightedPrompts": [{"audio": {"data": "not base64!"}}]}, "not base64"),
    ],
)
def test_malformed_prompts_are_protocol_errors(content, reason):
    with pytest.raises(lyria.ProtocolError, match=reason) as raised:
        lyria.prompts_request(content)
    assert raised.value.code == lyria.CLOSE_INVALID_PAYLOAD


def test_a_config_replaces_the_whole_config_unset_fields_back_to_defaults():
    update = lyria.config_request({"guidance": 2.0, "seed": 11})
    config = update.request.config
    assert config.guidance == 2.0 and config.seed == 11
    assert config.temperature == pytest.approx(facts.DEFAULT_TEMPERATURE)
    assert config.top_k == facts.DEFAULT_TOP_K
    assert update.unsupported == ()
    assert update.echo == {"guidance": 2.0, "seed": 11}


def test_an_empty_config_resets_everything_and_draws_a_new_seed():
    seeds = {lyria.config_request({}).request.config.seed for _ in range(5)}
    assert len(seeds) > 1  # an unset seed is random, as for a new session
    assert lyria.config_request(None).request.config.top_k == facts.DEFAULT_TOP_K


def test_fields_the_model_cannot_honour_are_named_unset_enums_are_not():
    update = lyria.config_request(
        {
            "bpm": 90,
            "scale": "G_MAJOR_E_MINOR",
            "muteBass": False,
            "musicGenerationMode": "MUSIC_GENERATION_MODE_UNSPECIFIED",
            "temperature": 1.0,
        }
    )
    assert update.unsupported == ("bpm", "scale", "muteBass")
    assert "bpm, scale, muteBass" in lyria.unsupported_warning(update.unsupported)["warning"]


@pytest.mark.parametrize(
    "config, reason",
    [
        ({"tempo": 1}, "unknown field"),
        ({"topK": 1.5}, "topK must be an integer"),
        ({"temperature": "hot"}, "temperature must be a number"),
        ([], "must be an object"),
    ],
)
def test_malformed_configs_are_protocol_errors(config, reason):
    with pytest.raises(lyria.ProtocolError, match=reason):
        lyria.config_request(config)


@pytest.mark.parametrize(
    "text, reason",
    [
        ("{", "not JSON"),
        ("[]", "exactly one"),
        ('{"setup": {}, "playbackControl": "PLAY"}', "exactly one"),
        ('{"realtimeInput": {}}', "unknown message"),
    ],
)
def test_frames_that_are_not_one_lyria_message_are_refused(text, reason):
    with pytest.raises(lyria.ProtocolError, match=reason):
        lyria.parse_client_message(text)


def test_playback_actions_map_and_unknown_ones_are_refused():
    assert (
        lyria.playback_request("RESET_CONTEXT").playback.action
        == music_pb2.PlaybackControl.RESET_CONTEXT
    )
    with pytest.raises(lyria.ProtocolError, match="PLAY, PAUSE, STOP, RESET_CONTEXT"):
        lyria.playback_request("REWIND")


def test_lyria_model_names_map_to_a_cluster_model_of_that_name_or_the_default():
    assert lyria.model_name({"model": "models/lyria-realtime-exp"}, {"tiny", "mock"}) == ""
    assert lyria.model_name({"model": "models/mock"}, {"tiny", "mock"}) == "mock"
    assert lyria.model_name({}, {"tiny"}) == ""


def test_an_audio_chunk_is_base64_pcm_with_lyrias_mime_type_and_its_source():
    chunk = music_pb2.AudioChunk(data=b"\x01\x00\xff\xff", prompt_version=2)
    message = lyria.audio_message(chunk, {"clientContent": {"weightedPrompts": []}})
    (audio,) = message["serverContent"]["audioChunks"]
    assert base64.b64decode(audio["data"]) == b"\x01\x00\xff\xff"
    assert audio["mimeType"] == "audio/l16;rate=48000;channels=2"
    assert audio["sourceMetadata"] == {"clientContent": {"weightedPrompts": []}}
    json.dumps(message)  # serializable as it is


def test_refused_prompts_become_filtered_prompts_naming_the_prompt():
    status = music_pb2.PromptStatus(
        accepted=False,
        message="prompt update refused",
        prompt_errors=["prompts[1]: text is longer than 512"],
    )
    assert lyria.prompt_status_messages(status, ("ok", "too long")) == [
        {"filteredPrompt": {"text": "too long", "filteredReason": "text is longer than 512"}}
    ]
    whole = music_pb2.PromptStatus(accepted=False, message="embedder unavailable")
    assert lyria.prompt_status_messages(whole, ("a", "b")) == [
        {"filteredPrompt": {"text": "a; b", "filteredReason": "embedder unavailable"}}
    ]
    assert lyria.prompt_status_messages(music_pb2.PromptStatus(accepted=True), ("a",)) == []


def test_close_reasons_fit_a_close_frame():
    reason = lyria.close_reason("é" * 200)
    assert len(reason.encode()) <= 123 and reason.endswith("...")
    assert lyria.close_reason("short") == "short"
