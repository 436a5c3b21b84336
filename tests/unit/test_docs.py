"""The README documents every flag each service has."""

from pathlib import Path

import pytest

from services.embedder.__main__ import build_parser as embedder_parser
from services.gateway.__main__ import build_parser as gateway_parser
from services.generator.__main__ import build_parser as generator_parser
from services.web.__main__ import build_parser as web_parser

README = (Path(__file__).parents[2] / "README.md").read_text()


@pytest.mark.parametrize("build_parser", [gateway_parser, embedder_parser, generator_parser,
                                          web_parser])
def test_every_flag_is_in_the_readme(build_parser):
    flags = [option for action in build_parser()._actions for option in action.option_strings
             if option.startswith("--") and option != "--help"]
    assert flags
    missing = [flag for flag in flags if f"`{flag}`" not in README]
    assert not missing, f"flags missing from README.md: {missing}"
