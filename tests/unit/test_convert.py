"""The t5x checkpoint converter: names, shapes, values, and the .tar form."""

import tarfile
from pathlib import Path

import numpy as np
import pytest

from services.generator.model import convert
from services.generator.model.configs import CONFIGS
from services.generator.model.depthformer import param_shapes, parameter_count

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "upstream_v1"
CHECKPOINT = FIXTURES / "t5x_checkpoint_tiny"


def _upstream_tree(size: str) -> dict[str, tuple[int, ...]]:
    """{path: shape} from a `param_tree_*.txt` listing of the upstream model."""
    tree = {}
    for line in (FIXTURES / f"param_tree_{size}.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, shape, _dtype = line.split("\t")
            tree[name] = tuple(int(n) for n in shape.strip("()").split(",") if n.strip())
    return tree


@pytest.mark.parametrize("size", ["tiny", "base", "large"])
def test_our_tree_matches_upstream_name_for_name_and_shape_for_shape(size):
    upstream = _upstream_tree(size)
    mapped = {convert.our_name(name): shape for name, shape in upstream.items()}
    assert len(mapped) == len(upstream)  # the mapping is one to one
    assert mapped == param_shapes(CONFIGS[size])


def test_parameter_counts_of_the_released_sizes():
    assert parameter_count(CONFIGS["large"]) == 761_651_456
    assert parameter_count(CONFIGS["base"]) == 347_873_472


def test_converted_values_are_the_checkpoint_arrays():
    upstream = convert.read_t5x_params(CHECKPOINT)
    assert len(upstream) == len(_upstream_tree("tiny"))
    params = convert.load_checkpoint(CHECKPOINT, CONFIGS["tiny"])
    temporal = "decoder/decoder/temporal_decoder"
    np.testing.assert_array_equal(
        params["temporal"]["layers_1"]["cross_attention"]["value"]["kernel"],
        upstream[f"{temporal}/layers_1/encoder_decoder_attention/value/kernel"],
    )
    np.testing.assert_array_equal(
        params["depth"]["relative_bias"]["embedding"],
        upstream["decoder/decoder/depth_decoder/relpos_bias_depth/rel_embedding"],
    )
    embedding = params["token_embedding"]["embedding"]
    assert embedding.shape == (29_824, 32) and embedding.dtype == np.float32
    assert 0.9 < embedding.std() < 1.1  # the N(0, 1) init, not zeros or garbage


def test_loads_a_tar_archive_like_the_released_checkpoints(tmp_path):
    archive = tmp_path / "llm_tiny.tar"
    optimizer_state = tmp_path / "state.param_states.unused"
    optimizer_state.write_text("not read")
    with tarfile.open(archive, "w") as tar:
        tar.add(CHECKPOINT, arcname="llm_tiny")
        tar.add(optimizer_state, arcname="llm_tiny/state.param_states.unused")
    from_tar = convert.load_checkpoint(archive, CONFIGS["tiny"])
    from_dir = convert.load_checkpoint(CHECKPOINT, CONFIGS["tiny"])
    np.testing.assert_array_equal(
        from_tar["logits_dense"]["kernel"], from_dir["logits_dense"]["kernel"]
    )
    np.testing.assert_array_equal(
        from_tar["encoder"]["layers_0"]["mlp"]["gelu_in"]["kernel"],
        from_dir["encoder"]["layers_0"]["mlp"]["gelu_in"]["kernel"],
    )


def test_a_checkpoint_of_another_size_is_refused():
    with pytest.raises(convert.CheckpointError, match="shape"):
        convert.load_checkpoint(CHECKPOINT, CONFIGS["base"])


def test_an_archive_without_a_checkpoint_is_refused(tmp_path):
    archive = tmp_path / "empty.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(FIXTURES / "config_tiny.json", arcname="config_tiny.json")
    with pytest.raises(convert.CheckpointError, match="no t5x"):
        convert.load_checkpoint(archive, CONFIGS["tiny"])


def test_unknown_upstream_names_are_refused():
    with pytest.raises(convert.CheckpointError, match="no mapping"):
        convert.our_name("decoder/decoder/temporal_decoder/layers_0/unknown/kernel")
