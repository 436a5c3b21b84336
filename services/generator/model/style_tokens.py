"""Style embedding -> the first 6 MusicCoCa RVQ tokens the depthformer's encoder reads.

The generator receives a mixed 768-d style embedding per session and quantizes it itself: the
nearest codebook vector to the residual, level by level. Levels never depend on
later ones, so only the 6 levels the model reads are kept.

Upstream's quantizer SavedModel (`savedmodels/musiccoca_mv212_quant`) stores its 12 codebooks
as the variables `variables/<i>` of the checkpoint, each transposed ([768, 1024]). The list is
sorted by the original variable names as strings, so levels 10 and 11 sit at positions 2 and 3:
SAVED_VARIABLE_ORDER[level] is the list position holding that level.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from services.common import model_facts as facts

STYLE_QUANTIZER_ASSET = "savedmodels/musiccoca_mv212_quant"
SAVED_VARIABLE_ORDER = (0, 1, 4, 5, 6, 7, 8, 9, 10, 11, 2, 3)


def load_style_codebooks(quantizer_dir: Path) -> np.ndarray:
    """All 12 codebooks of a MusicCoCa quantizer SavedModel, float32[12, 1024, 768], level order."""
    import tensorflow as tf  # imported lazily: only loading needs it; reads files, no devices

    checkpoint = tf.train.load_checkpoint(str(Path(quantizer_dir) / "variables" / "variables"))
    codebooks = np.stack(
        [
            checkpoint.get_tensor(f"variables/{position}/.ATTRIBUTES/VARIABLE_VALUE").T
            for position in SAVED_VARIABLE_ORDER
        ]
    ).astype(np.float32)
    expected = (facts.STYLE_RVQ_LEVELS_TOTAL, facts.CODEBOOK_SIZE, facts.STYLE_EMBEDDING_DIM)
    if codebooks.shape != expected:
        raise ValueError(
            f"style codebooks in {quantizer_dir} have shape {codebooks.shape}, expected {expected}"
        )
    return codebooks


class StyleQuantizer:
    """Residual vector quantization of style embeddings onto the first 6 MusicCoCa levels."""

    def __init__(self, codebooks: np.ndarray, levels: int = facts.STYLE_RVQ_LEVELS):
        if (
            codebooks.ndim != 3
            or codebooks.shape[0] < levels
            or codebooks.shape[1:] != (facts.CODEBOOK_SIZE, facts.STYLE_EMBEDDING_DIM)
        ):
            raise ValueError(f"codebooks must be [>={levels}, 1024, 768], got {codebooks.shape}")
        # float64: near-ties between two codes must not be decided by rounding.
        self._codebooks = codebooks[:levels].astype(np.float64)
        self._squared_norms = np.sum(self._codebooks**2, axis=-1)  # [levels, 1024]

    @classmethod
    def load(cls, quantizer_dir: Path) -> StyleQuantizer:
        return cls(load_style_codebooks(quantizer_dir))

    @property
    def levels(self) -> int:
        return self._codebooks.shape[0]

    def tokens(self, embeddings: np.ndarray) -> np.ndarray:
        """int32[B, 6] raw codes (0..1023) for float32[B, 768] embeddings."""
        embeddings = np.asarray(embeddings)
        if embeddings.ndim != 2 or embeddings.shape[1] != facts.STYLE_EMBEDDING_DIM:
            raise ValueError(f"embeddings must be [batch, 768], got {embeddings.shape}")
        residual = embeddings.astype(np.float64)
        codes = np.empty((embeddings.shape[0], self.levels), np.int32)
        for level, codebook in enumerate(self._codebooks):
            # |r - c|^2 = |r|^2 - 2 r.c + |c|^2; |r|^2 is the same for every code of a row.
            distances = self._squared_norms[level] - 2.0 * residual @ codebook.T
            codes[:, level] = np.argmin(distances, axis=1)
            residual = residual - codebook[codes[:, level]]
        return codes
