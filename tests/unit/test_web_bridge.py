"""What each chunk was generated with, as the web service reports it (services/web/bridge.py)."""

from __future__ import annotations

from services.common.proto.mrt.v1 import music_pb2
from services.web import lyria
from services.web.bridge import ChunkSources


def _chunk(prompt_version: int, config_version: int) -> music_pb2.AudioChunk:
    return music_pb2.AudioChunk(prompt_version=prompt_version, config_version=config_version)


def test_chunks_report_the_prompts_and_config_of_their_versions():
    sources = ChunkSources()
    sources.prompts_sent(lyria.prompts_request({"weightedPrompts": [{"text": "a"}]}))
    sources.prompts_sent(lyria.prompts_request({"weightedPrompts": [{"text": "b"}]}))
    assert sources.prompts_answered(music_pb2.PromptStatus(accepted=True, version=1)) == ("a",)
    assert sources.prompts_answered(music_pb2.PromptStatus(accepted=False, version=1)) == ("b",)
    sources.config_sent(lyria.config_request({"temperature": 0.5}))
    metadata = sources.source_metadata(_chunk(1, 1))
    assert metadata == {
        "clientContent": {"weightedPrompts": [{"text": "a", "weight": 1.0}]},
        "musicGenerationConfig": {"temperature": 0.5},
    }
    assert sources.source_metadata(_chunk(0, 0)) == {}  # before any update: nothing to tell


def test_a_refused_config_takes_no_version():
    sources = ChunkSources()
    sources.config_sent(lyria.config_request({"temperature": 0.5}))
    sources.config_sent(lyria.config_request({"temperature": 99.0}))
    sources.config_refused()  # the gateway's INVALID_CONFIG warning: it kept version 1
    sources.config_sent(lyria.config_request({"temperature": 2.0}))
    assert sources.source_metadata(_chunk(0, 1))["musicGenerationConfig"] == {"temperature": 0.5}
    assert sources.source_metadata(_chunk(0, 2))["musicGenerationConfig"] == {"temperature": 2.0}
