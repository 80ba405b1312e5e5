"""Adapters to the heavy libraries: the only room that imports them.

Each engine loads its model once (after checking its SHA-256 pins), serves many calls, and
serializes its own inferences with a lock. Library exceptions are translated here.
"""

import logging
import os

# Nothing a model library does may leave the premises: no model hub and no telemetry. ONNX
# Runtime (under Piper and the embedding model) otherwise looks up
# mobile.events.data.microsoft.com from native code and queues device and machine facts under
# ~/.cache/Microsoft. Set here, before any of them is imported (this room alone imports them),
# whatever the environment said; each engine also switches its library's telemetry off in code.
OFFLINE_ENVIRONMENT = {
    "ORT_DISABLE_TELEMETRY": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "DO_NOT_TRACK": "1",
}
os.environ.update(OFFLINE_ENVIRONMENT)

# The model libraries log what they hear and say at DEBUG (Piper logs each sentence's text,
# faster-whisper each segment). Logs must never hold transcripts or replies: whatever the
# appliance's own log level, these stay at WARNING.
for _library in ("piper", "faster_whisper", "ctranslate2", "llama_cpp", "onnxruntime"):
    logging.getLogger(_library).setLevel(logging.WARNING)
