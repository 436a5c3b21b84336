"""Public streaming service: validates, mixes prompts, places sessions, paces audio."""
