"""Standard-library-only building blocks: audio frames, events, errors and the ports (Protocols)."""
