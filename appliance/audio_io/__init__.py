"""Audio ends: WAV files, the sound card (sounddevice), and an in-memory pair for tests."""
