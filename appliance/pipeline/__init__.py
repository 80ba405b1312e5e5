"""The data path: endpointing -> STT -> LLM -> sentence chunking -> TTS -> audio out.

Reaches engines and audio only through the Protocols of ``appliance.core.ports``.
"""
