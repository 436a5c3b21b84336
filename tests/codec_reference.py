"""The tiny codec's own encoding, straight from its SavedModels in TensorFlow: a reference
computed independently of the services' JAX path."""

from __future__ import annotations

import numpy as np

from services.common.assets import AssetStore
from services.generator.model import spectrostream
from services.generator.model.spectrostream import import_tensorflow_cpu_only


def tensorflow_codes(store: AssetStore, audio: np.ndarray) -> np.ndarray:
    """int32[frames, 16]: the encoder and quantizer SavedModels' codes for float32[T, 2] audio."""
    tf = import_tensorflow_cpu_only()
    encoder = tf.saved_model.load(str(store.path(spectrostream.ENCODER_ASSET)))
    quantizer = tf.saved_model.load(str(store.path(spectrostream.QUANTIZER_ASSET)))
    embeddings = encoder(tf.constant(np.asarray(audio, np.float32)[None]))
    codes, _ = quantizer.inference_encoding_with_tf_function(embeddings, num_quantizers=16)
    return np.transpose(codes.numpy()[:, 0], (1, 0))
