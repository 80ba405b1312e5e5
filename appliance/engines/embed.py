"""Sentence embeddings with all-MiniLM-L6-v2 (int8 ONNX) on ONNX Runtime, for retrieval.

The model outputs one state per token; a sentence is their mean over the attention mask,
scaled to unit length (what sentence-transformers does for this model), so a dot product is
the cosine similarity. The WordPiece tokenizer is the model's own ``tokenizer.json``, run by
the ``tokenizers`` library (already a dependency of faster-whisper).
"""

from __future__ import annotations

import collections
import hashlib
import secrets
import threading
from collections.abc import Sequence

import numpy as np

from appliance.core.errors import KnowledgeError, ModelError
from appliance.core.models import ModelSpec, require_verified

MAX_TOKENS = 256
RECENT = 64
"""Single texts remembered (the input guard and the knowledge base embed the same turn)."""


class MiniLmEmbedder:
    def __init__(self, spec: ModelSpec, *, threads: int = 1) -> None:
        require_verified(spec)
        import onnxruntime
        from tokenizers import Tokenizer

        onnxruntime.disable_telemetry_events()  # nothing leaves the premises
        base = spec.base_dir
        try:
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            self._session = onnxruntime.InferenceSession(
                str(base / "model.onnx"), sess_options=options, providers=["CPUExecutionProvider"]
            )
            self._tokenizer = Tokenizer.from_file(str(base / "tokenizer.json"))
        except Exception as exc:
            raise ModelError(
                "model.load", f"cannot load the embedding model {spec.path}: {exc}"
            ) from exc
        self._tokenizer.enable_truncation(MAX_TOKENS)
        self._tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        self._inputs = {i.name for i in self._session.get_inputs()}
        self._lock = threading.Lock()
        # Keyed by a hash salted per embedder, so the callers' words are not kept in memory
        self._recent: collections.OrderedDict[bytes, list[float]] = collections.OrderedDict()
        self._salt = secrets.token_bytes(16)
        self.spec = spec

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if len(texts) == 1:
            key = self._key(texts[0])
            with self._lock:
                known = self._recent.get(key)
                if known is not None:
                    self._recent.move_to_end(key)
                    return [list(known)]
            vectors = self._embed(texts)
            with self._lock:
                self._recent[key] = vectors[0]
                while len(self._recent) > RECENT:
                    self._recent.popitem(last=False)
            return [list(vectors[0])]
        return self._embed(texts)

    def _key(self, text: str) -> bytes:
        return hashlib.blake2b(text.encode(), key=self._salt, digest_size=16).digest()

    def _embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        try:
            with self._lock:
                encoded = self._tokenizer.encode_batch(list(texts))
                ids = np.array([e.ids for e in encoded], dtype=np.int64)
                mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
                feeds = {"input_ids": ids, "attention_mask": mask}
                if "token_type_ids" in self._inputs:
                    feeds["token_type_ids"] = np.zeros_like(ids)
                states = self._session.run(None, feeds)[0]
        except Exception as exc:
            raise KnowledgeError(
                "knowledge.embed", f"embedding failed: {type(exc).__name__}"
            ) from exc
        pooled = (states * mask[..., None]).sum(axis=1) / np.maximum(mask.sum(axis=1), 1)[:, None]
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        vectors: list[list[float]] = (pooled / np.maximum(norms, 1e-12)).tolist()
        return vectors
