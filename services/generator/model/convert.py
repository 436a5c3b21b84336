"""Load an upstream t5x checkpoint of the depthformer into our parameter tree.

A t5x checkpoint is a directory: a msgpack file `checkpoint` holding the tree of the train
state, whose leaves are either small arrays inlined in the msgpack or tensorstore specs of a
zarr array stored next to it (one directory per leaf, e.g. `target.encoder.layers_0...`).
`target` is the model's parameters; `state` (the optimizer's) is ignored. The released
checkpoints (`checkpoints/llm_{base,large}_*.tar`) are `.tar` archives of such a directory.

`NAME_MAP` is the one place that says which upstream parameter becomes which of ours.
"""

from __future__ import annotations

import re
import tarfile
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tensorstore as ts
from flax import serialization, traverse_util

from services.generator.model.configs import DepthformerConfig
from services.generator.model.depthformer import Params, param_shapes

CHECKPOINT_FILE = "checkpoint"
_L = r"(?P<i>\d+)"  # a layer index
_ATTN = r"(?P<proj>query|key|value|out)"

# Upstream t5x parameter path (regular expression) -> our parameter path (template).
NAME_MAP: tuple[tuple[str, str], ...] = (
    ("token_embedder/embedding", "token_embedding/embedding"),
    # encoder
    (
        rf"encoder/layers_{_L}/pre_attention_layer_norm/scale",
        "encoder/layers_{i}/self_attention_norm/scale",
    ),
    (
        rf"encoder/layers_{_L}/attention/{_ATTN}/kernel",
        "encoder/layers_{i}/self_attention/{proj}/kernel",
    ),
    (rf"encoder/layers_{_L}/pre_mlp_layer_norm/scale", "encoder/layers_{i}/mlp_norm/scale"),
    (rf"encoder/layers_{_L}/mlp/wi_0/kernel", "encoder/layers_{i}/mlp/gelu_in/kernel"),
    (rf"encoder/layers_{_L}/mlp/wi_1/kernel", "encoder/layers_{i}/mlp/linear_in/kernel"),
    (rf"encoder/layers_{_L}/mlp/wo/kernel", "encoder/layers_{i}/mlp/out/kernel"),
    ("encoder/encoder_norm/scale", "encoder/final_norm/scale"),
    # temporal decoder stack
    (
        "decoder/decoder/temporal_decoder/relpos_bias/rel_embedding",
        "temporal/relative_bias/embedding",
    ),
    (
        rf"decoder/decoder/temporal_decoder/layers_{_L}/pre_self_attention_layer_norm/scale",
        "temporal/layers_{i}/self_attention_norm/scale",
    ),
    (
        rf"decoder/decoder/temporal_decoder/layers_{_L}/self_attention/{_ATTN}/kernel",
        "temporal/layers_{i}/self_attention/{proj}/kernel",
    ),
    (
        rf"decoder/decoder/temporal_decoder/layers_{_L}/pre_cross_attention_layer_norm/scale",
        "temporal/layers_{i}/cross_attention_norm/scale",
    ),
    (
        rf"decoder/decoder/temporal_decoder/layers_{_L}/encoder_decoder_attention/{_ATTN}/kernel",
        "temporal/layers_{i}/cross_attention/{proj}/kernel",
    ),
    (
        rf"decoder/decoder/temporal_decoder/layers_{_L}/pre_mlp_layer_norm/scale",
        "temporal/layers_{i}/mlp_norm/scale",
    ),
    (
        rf"decoder/decoder/temporal_decoder/layers_{_L}/mlp/wi_0/kernel",
        "temporal/layers_{i}/mlp/gelu_in/kernel",
    ),
    (
        rf"decoder/decoder/temporal_decoder/layers_{_L}/mlp/wi_1/kernel",
        "temporal/layers_{i}/mlp/linear_in/kernel",
    ),
    (
        rf"decoder/decoder/temporal_decoder/layers_{_L}/mlp/wo/kernel",
        "temporal/layers_{i}/mlp/out/kernel",
    ),
    # depth decoder stack
    (
        "decoder/decoder/depth_decoder/relpos_bias_depth/rel_embedding",
        "depth/relative_bias/embedding",
    ),
    (
        rf"decoder/decoder/depth_decoder/depth_layers_{_L}/pre_self_attention_layer_norm/scale",
        "depth/layers_{i}/self_attention_norm/scale",
    ),
    (
        rf"decoder/decoder/depth_decoder/depth_layers_{_L}/self_attention/{_ATTN}/kernel",
        "depth/layers_{i}/self_attention/{proj}/kernel",
    ),
    (
        rf"decoder/decoder/depth_decoder/depth_layers_{_L}/pre_mlp_layer_norm/scale",
        "depth/layers_{i}/mlp_norm/scale",
    ),
    (
        rf"decoder/decoder/depth_decoder/depth_layers_{_L}/mlp/wi_0/kernel",
        "depth/layers_{i}/mlp/gelu_in/kernel",
    ),
    (
        rf"decoder/decoder/depth_decoder/depth_layers_{_L}/mlp/wi_1/kernel",
        "depth/layers_{i}/mlp/linear_in/kernel",
    ),
    (
        rf"decoder/decoder/depth_decoder/depth_layers_{_L}/mlp/wo/kernel",
        "depth/layers_{i}/mlp/out/kernel",
    ),
    # output
    ("decoder/decoder_norm/scale", "decoder_norm/scale"),
    ("decoder/logits_dense/kernel", "logits_dense/kernel"),
)
_COMPILED_MAP = tuple((re.compile(pattern), template) for pattern, template in NAME_MAP)


class CheckpointError(ValueError):
    """The checkpoint is not a depthformer t5x checkpoint of the expected size."""


def our_name(upstream_name: str) -> str:
    """Our parameter path for an upstream t5x parameter path ("encoder/layers_0/...")."""
    for pattern, template in _COMPILED_MAP:
        match = pattern.fullmatch(upstream_name)
        if match:
            return template.format(**match.groupdict())
    raise CheckpointError(f"no mapping for upstream parameter {upstream_name!r}")


def read_t5x_params(checkpoint_dir: Path | str) -> dict[str, np.ndarray]:
    """{upstream path: float32 array} of every model parameter in a t5x checkpoint directory."""
    checkpoint_dir = Path(checkpoint_dir)
    state = serialization.msgpack_restore((checkpoint_dir / CHECKPOINT_FILE).read_bytes())
    try:
        target = state["optimizer"]["target"]
    except KeyError as e:
        raise CheckpointError(f"{checkpoint_dir} has no optimizer/target tree") from e
    params = {}
    for path, leaf in _leaves(target):
        params["/".join(path)] = np.asarray(_read_leaf(checkpoint_dir, leaf), np.float32)
    return params


def _leaves(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()):
    """(path, leaf) pairs, where a tensorstore spec (a dict with a `driver`) is one leaf."""
    for key, value in tree.items():
        if isinstance(value, Mapping) and "driver" not in value:
            yield from _leaves(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def _read_leaf(checkpoint_dir: Path, leaf: Any) -> np.ndarray:
    if not isinstance(leaf, Mapping):
        return np.asarray(leaf)  # small arrays are inlined in the msgpack
    # The stored spec points at the zarr directory where it was written; read it from here.
    stored_path = leaf["kvstore"]["path"] if "kvstore" in leaf else leaf["path"]
    spec = {
        "driver": leaf["driver"],
        "kvstore": {
            "driver": "file",
            "path": str(checkpoint_dir / Path(stored_path.rstrip("/")).name),
        },
    }
    return ts.open(spec, open=True, read=True).result().read().result()


def convert_params(upstream: Mapping[str, np.ndarray], config: DepthformerConfig) -> Params:
    """Our nested parameter tree from {upstream path: array}, checked name for name and shape
    for shape against the model of `config`."""
    expected = param_shapes(config)
    flat = {}
    for name, array in upstream.items():
        ours = our_name(name)
        if ours not in expected:
            raise CheckpointError(f"{name} -> {ours} is not a parameter of this config")
        if tuple(array.shape) != expected[ours]:
            raise CheckpointError(
                f"{name}: shape {tuple(array.shape)}, the config expects {expected[ours]}"
            )
        flat[ours] = array
    missing = sorted(set(expected) - set(flat))
    if missing:
        raise CheckpointError(f"checkpoint lacks {len(missing)} parameters, e.g. {missing[:3]}")
    return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


def load_checkpoint(path: Path | str, config: DepthformerConfig) -> Params:
    """Our parameters from a t5x checkpoint directory or a `.tar` of one."""
    path = Path(path)
    if path.is_dir():
        return convert_params(read_t5x_params(path), config)
    with tempfile.TemporaryDirectory() as scratch, tarfile.open(path) as archive:
        return convert_params(read_t5x_params(_extract_params(archive, Path(scratch))), config)


def _extract_params(archive: tarfile.TarFile, scratch: Path) -> Path:
    """Extract the `checkpoint` file and the `target.*` arrays (not the optimizer state);
    returns the directory that holds them inside `scratch`."""
    members = archive.getmembers()
    checkpoint_files = [m for m in members if m.isfile() and Path(m.name).name == CHECKPOINT_FILE]
    if not checkpoint_files:
        raise CheckpointError(f"{archive.name!s} holds no t5x '{CHECKPOINT_FILE}' file")
    root = Path(min(checkpoint_files, key=lambda m: m.name.count("/")).name).parent
    wanted = [
        m
        for m in members
        if (Path(m.name).parent == root and Path(m.name).name == CHECKPOINT_FILE)
        or _under_target_dir(Path(m.name), root)
    ]
    archive.extractall(scratch, members=wanted, filter="data")
    return scratch / root


def _under_target_dir(member: Path, root: Path) -> bool:
    try:
        relative = member.relative_to(root)
    except ValueError:
        return False
    return bool(relative.parts) and relative.parts[0].startswith("target.")
