"""Voice Appliance: a self-hosted, on-premises voice agent."""

__version__ = "0.1.0"
