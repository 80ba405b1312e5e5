"""Fakes that ship beside the Protocols they fake, for fast tests of the logic around models."""
