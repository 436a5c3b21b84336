"""The catalogue of model names the cluster knows (engines are built by the generator)."""

MODEL_DESCRIPTIONS = {
    "tiny": "Magenta RT architecture at a small size, random weights; built locally (offline default)",
    "base": "Magenta RT base (upstream weights)",
    "large": "Magenta RT large (upstream weights)",
    "mock": "sine tones with the real session state; for development and service tests",
    "sim": "an accelerator's cost (sleeps a + b x batch size per chunk) with the real session "
    "state; measures the serving system, not music",
}
MODEL_NAMES = tuple(MODEL_DESCRIPTIONS)
# Models that need no download: their assets are built locally.
LOCAL_MODELS = ("tiny", "mock", "sim")
# The Magenta RT architecture (depthformer, SpectroStream, MusicCoCa), at three sizes.
MAGENTA_RT_MODELS = ("tiny", "base", "large")
# The embedder's style models: MusicCoCa at our tiny size or upstream's, and a mock.
STYLE_MODELS = ("tiny", "musiccoca", "mock")
