"""Guardrails: spoken input is untrusted input, and safety must not rest on a small model.

Layer 1 (input): normalize, detect injection and jailbreak patterns, redact personal and card
data. Layer 2 (prompt): a strict system prompt with a canary; caller text fenced as data.
Layer 3 (output): check each sentence before it is spoken. Plus the conversation policy:
refused topics, and a fixed distress path that escalates.
"""
