"""Frozen, validated settings and the model manifest."""

from appliance.config.settings import Settings, load_settings

__all__ = ["Settings", "load_settings"]
