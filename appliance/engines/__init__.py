"""Adapters to the heavy libraries: the only room that imports them.

Each engine loads its model once (after checking its SHA-256 pins), serves many calls, and
serializes its own inferences with a lock. Library exceptions are translated here.
"""

import logging

# The model libraries log what they hear and say at DEBUG (Piper logs each sentence's text,
# faster-whisper each segment). Logs must never hold transcripts or replies: whatever the
# appliance's own log level, these stay at WARNING.
for _library in ("piper", "faster_whisper", "ctranslate2", "llama_cpp", "onnxruntime"):
    logging.getLogger(_library).setLevel(logging.WARNING)
