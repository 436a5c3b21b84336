"""Style embedding service: MusicCoCa text / audio embeddings, micro-batched and cached."""
