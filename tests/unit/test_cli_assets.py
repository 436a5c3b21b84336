"""`mrt assets download`: which files it asks the asset store for (the Hub is never reached)."""

import sys
import types
from pathlib import Path

import pytest

from services.cli.main import main
from services.common.assets import AssetStore

GENERATOR_TABLE = "services.generator.magenta_rt"


@pytest.fixture
def downloads(monkeypatch):
    """Replaces AssetStore.download; records (root, relpaths) of each call."""
    calls = []

    def fake_download(store, relpaths):
        calls.append((store.root, list(relpaths)))
        return [store.root / rel for rel in relpaths]

    monkeypatch.setattr(AssetStore, "download", fake_download)
    return calls


@pytest.fixture
def generator_table(monkeypatch):
    module = types.ModuleType(GENERATOR_TABLE)
    module.MODEL_ASSET_PATHS = {
        "base": [
            "savedmodels/ssv2_48k_stereo/decoder",
            "checkpoints/llm_base_x.tar",
            "savedmodels/musiccoca_mv212_quant",
        ],  # shared with MusicCoCa: fetched once
    }
    monkeypatch.setitem(sys.modules, GENERATOR_TABLE, module)
    return module


def test_downloads_the_files_of_the_generator_table(downloads, generator_table, tmp_path, capsys):
    assert main(["assets", "download", "--model", "base", "--assets-dir", str(tmp_path)]) == 0
    assert downloads == [
        (
            tmp_path,
            [
                "savedmodels/ssv2_48k_stereo/decoder",
                "checkpoints/llm_base_x.tar",
                "savedmodels/musiccoca_mv212_quant",
            ],
        )
    ]
    assert str(tmp_path / "checkpoints/llm_base_x.tar") in capsys.readouterr().out.splitlines()


def test_assets_dir_from_the_environment(downloads, generator_table, tmp_path, monkeypatch):
    monkeypatch.setenv("MRT_ASSETS_DIR", str(tmp_path))
    assert main(["assets", "download", "--model", "base"]) == 0
    assert downloads[0][0] == Path(tmp_path)


def test_tiny_is_built_locally_not_downloaded(downloads, tmp_path, capsys):
    assert main(["assets", "download", "--model", "tiny", "--assets-dir", str(tmp_path)]) == 0
    assert downloads == []
    assert "needs no download" in capsys.readouterr().err
    tiny = AssetStore(tmp_path).tiny_root()
    for relpath in [
        "savedmodels/ssv2_48k_stereo/decoder",
        "savedmodels/musiccoca_mv212_quant",
        "savedmodels/musiccoca_mv212f_cpu_novocab",
        "vocabularies/musiccoca_mv212f_vocab.model",
    ]:
        assert (tiny / relpath).exists(), relpath


def test_model_missing_from_the_table_fails(downloads, generator_table, capsys):
    assert main(["assets", "download", "--model", "large"]) == 1
    assert "knows no upstream files for model 'large'" in capsys.readouterr().err
    assert downloads == []


def test_without_the_generator_table_fails_clearly(downloads, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, GENERATOR_TABLE, None)  # makes the import fail
    assert main(["assets", "download", "--model", "base"]) == 1
    assert "cannot read the generator's asset table" in capsys.readouterr().err


def test_download_failure_is_reported(generator_table, monkeypatch, capsys):
    def offline(store, relpaths):
        raise ConnectionError("no route to huggingface.co")

    monkeypatch.setattr(AssetStore, "download", offline)
    assert main(["assets", "download", "--model", "base"]) == 1
    err = capsys.readouterr().err
    assert "download failed: ConnectionError: no route to huggingface.co" in err
    assert "Traceback" not in err


def test_unknown_model_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["assets", "download", "--model", "huge"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'huge'" in capsys.readouterr().err
