"""Fixed facts of Magenta RT v1 (docs/model.md): audio, chunking and the token layout.

Everything that depends on these numbers imports them from here, so they live in one place.
"""

SAMPLE_RATE_HZ = 48_000
CHANNELS = 2
FRAME_RATE_HZ = 25
SAMPLES_PER_FRAME = SAMPLE_RATE_HZ // FRAME_RATE_HZ  # 1 920 samples = 40 ms

CHUNK_SECONDS = 2.0
CHUNK_FRAMES = 50
CHUNK_SAMPLES = CHUNK_FRAMES * SAMPLES_PER_FRAME  # 96 000
# Sessions may ask for shorter chunks: 5 to 50 frames (0.2 to 2 s); 50 is the default.
CHUNK_FRAMES_RANGE = (5, CHUNK_FRAMES)
CONTEXT_FRAMES = 250  # 10 s = 5 chunks
CROSSFADE_SAMPLES = SAMPLES_PER_FRAME  # one frame, 40 ms

CODEBOOK_SIZE = 1024
DECODER_RVQ_LEVELS = 16  # levels generated per frame
ENCODER_RVQ_LEVELS = 4  # levels of each context frame fed to the encoder
STYLE_RVQ_LEVELS = 6  # MusicCoCa RVQ tokens fed to the encoder
STYLE_RVQ_LEVELS_TOTAL = 12
STYLE_EMBEDDING_DIM = 768

# Token layout: one shared vocabulary.
PAD_TOKEN = 0
MASK_TOKEN = 1
CODEC_TOKEN_OFFSET = 2  # level k, code c -> 2 + k * 1024 + c
STYLE_TOKEN_OFFSET = CODEC_TOKEN_OFFSET + DECODER_RVQ_LEVELS * CODEBOOK_SIZE + 1024  # 17 410
VOCAB_SIZE_USED = STYLE_TOKEN_OFFSET + STYLE_RVQ_LEVELS * CODEBOOK_SIZE  # 23 554
VOCAB_SIZE_PRETRAINED = 29_698
VOCAB_ROWS = 29_824  # embedding / logit rows: 29 698 rounded up to a multiple of 128

ENCODER_INPUT_TOKENS = CONTEXT_FRAMES * ENCODER_RVQ_LEVELS + STYLE_RVQ_LEVELS  # 1 006
DECODER_STEPS = CHUNK_FRAMES * DECODER_RVQ_LEVELS  # 800

# Sampling defaults and the ranges clients may set.
DEFAULT_TEMPERATURE = 1.1
DEFAULT_TOP_K = 40
DEFAULT_GUIDANCE = 5.0
TEMPERATURE_RANGE = (0.0, 4.0)
TOP_K_RANGE = (0, 1024)
GUIDANCE_RANGE = (0.0, 10.0)

AUDIO_PROMPT_SECONDS = 10.0  # audio prompts: the first 10 s are used
STYLE_AUDIO_SAMPLE_RATE_HZ = 16_000

# Audio injection: live input and initial_audio written into the context (docs/model.md).
INJECTION_PREFIX_FRAMES = 16  # frames encoded in front of the chunk-long mix
INJECTION_EDGE_FRAMES = 8  # of those, dropped after encoding (the encoder's left-edge artefacts)
INJECTION_MIX_FRAMES = CHUNK_FRAMES + INJECTION_PREFIX_FRAMES  # 66
INJECTION_MIX_SAMPLES = INJECTION_MIX_FRAMES * SAMPLES_PER_FRAME  # 126 720
INJECTION_WRITTEN_FRAMES = (
    INJECTION_MIX_FRAMES - INJECTION_EDGE_FRAMES
)  # 58: the last 58 context frames
INPUT_GAP_RAMP_SAMPLES = 100  # the input fades out linearly over this many samples into the gap
INITIAL_AUDIO_SECONDS = 10.0  # initial_audio: the last 10 s seed the context
DEFAULT_INPUT_FEEDBACK = 0.95
DEFAULT_INPUT_GAP_MS = 0.0
DEFAULT_INPUT_OFFSET_MS = 0.0
DEFAULT_INPUT_STYLE_WEIGHT = 0.0
INPUT_FEEDBACK_RANGE = (0.0, 1.0)
INPUT_GAP_MS_RANGE = (0.0, 2000.0)
INPUT_OFFSET_MS_RANGE = (-2000.0, 8000.0)
INPUT_STYLE_WEIGHT_RANGE = (0.0, 10.0)
INPUT_STYLE_SECONDS = 10.0  # the live style prompt embeds the newest 10 s of input


def session_chunk_frames(requested: int) -> int:
    """A session's codec frames per chunk from what it asked for (`SessionSetup.chunk_frames`,
    `OpenSession.chunk_frames`): 0 means the default 50; ValueError outside the range."""
    if requested == 0:
        return CHUNK_FRAMES
    low, high = CHUNK_FRAMES_RANGE
    if not low <= requested <= high:
        raise ValueError(
            f"chunk_frames must be in [{low}, {high}] (frames of 40 ms) or 0 for the default "
            f"{CHUNK_FRAMES}, got {requested}"
        )
    return requested
