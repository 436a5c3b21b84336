"""Where model files come from: a local directory, filled from the Hugging Face Hub on request.

Layout under the assets directory (``--assets-dir`` / ``MRT_ASSETS_DIR``) mirrors the upstream
repository ``google/magenta-realtime``, so a directory made with ``mrt assets download`` and a
plain ``huggingface-cli download`` both work. The project's own ``tiny`` assets live under
``<assets_dir>/tiny-v2/`` in the same layout and are built locally, never downloaded.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

HF_REPO_ID = "google/magenta-realtime"
DEFAULT_ASSETS_DIR = (
    Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mrt" / "assets"
)
TINY_SUBDIR = "tiny-v2"  # v2: the codec encoder inverts the decoder

log = logging.getLogger(__name__)


class AssetMissingError(FileNotFoundError):
    """An asset is neither on disk nor allowed to be downloaded. The message says how to get it."""


class AssetStore:
    """Resolves upstream-relative asset paths to local paths, downloading only when allowed."""

    def __init__(
        self,
        root: Path | str | None = None,
        *,
        allow_download: bool = False,
        repo_id: str = HF_REPO_ID,
    ):
        self.root = Path(
            root or os.environ.get("MRT_ASSETS_DIR") or DEFAULT_ASSETS_DIR
        ).expanduser()
        self.allow_download = allow_download
        self.repo_id = repo_id

    def tiny_root(self) -> Path:
        """Where the project-made ``tiny`` assets live (same layout as upstream)."""
        return self.root / TINY_SUBDIR

    def path(self, relpath: str) -> Path:
        """The local path of an upstream asset (file or directory), downloading it if allowed."""
        local = self.root / relpath
        if local.exists():
            return local
        if not self.allow_download:
            raise AssetMissingError(
                f"model asset '{relpath}' is not in {self.root}. Fetch it with "
                f"'mrt assets download --model <name>' (needs network access to the Hugging Face "
                f"Hub, repository {self.repo_id}), or copy the upstream files there, or point "
                f"--assets-dir / MRT_ASSETS_DIR at a directory that has them."
            )
        return self.download([relpath])[0]

    def download(self, relpaths: list[str]) -> list[Path]:
        """Fetch files or directories of the upstream repository into the assets directory."""
        import huggingface_hub  # imported lazily: only the download path needs it

        patterns = []
        for rel in relpaths:
            patterns += [rel, f"{rel.rstrip('/')}/**"]
        log.info("downloading %s from %s into %s", relpaths, self.repo_id, self.root)
        huggingface_hub.snapshot_download(
            repo_id=self.repo_id, local_dir=str(self.root), allow_patterns=patterns
        )
        missing = [rel for rel in relpaths if not (self.root / rel).exists()]
        if missing:
            raise AssetMissingError(f"{self.repo_id} has no {missing}")
        return [self.root / rel for rel in relpaths]


def move_into_place(built: Path, final: Path) -> None:
    """Rename a freshly built asset to its final path, atomically, unless another process got
    there first (then theirs is kept and the caller discards its own)."""
    try:
        os.rename(built, final)
    except OSError:
        if not final.exists():  # a real failure, not a lost race
            raise
