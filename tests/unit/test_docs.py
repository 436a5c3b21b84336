"""The docs match the code: every flag is in the README, and nothing cites notes users lack."""

import re
from pathlib import Path

import pytest

from services.embedder.__main__ import build_parser as embedder_parser
from services.gateway.__main__ import build_parser as gateway_parser
from services.generator.__main__ import build_parser as generator_parser
from services.web.__main__ import build_parser as web_parser

README = (Path(__file__).parents[2] / "README.md").read_text()


@pytest.mark.parametrize(
    "build_parser", [gateway_parser, embedder_parser, generator_parser, web_parser]
)
def test_every_flag_is_in_the_readme(build_parser):
    flags = [
        option
        for action in build_parser()._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    ]
    assert flags
    missing = [flag for flag in flags if f"`{flag}`" not in README]
    assert not missing, f"flags missing from README.md: {missing}"


def test_docs_and_code_stand_alone():
    """Users' clones carry only the project: nothing may send them to the team's design notes."""
    root = Path(__file__).parents[2]
    citation = re.compile(r"\bDESIGN\s+(section\s+)?\d")
    files = [root / "README.md", *root.glob("docs/**/*.md")]
    for folder in ("services", "bench", "tests", "deploy"):
        files += [p for p in (root / folder).rglob("*") if p.suffix in {".py", ".md", ".yaml"}]
    citing = [str(p.relative_to(root)) for p in files if citation.search(p.read_text())]
    assert not citing, f"these files cite design sections users do not have: {citing}"
