"""Telephony: G.711 now; SIP signalling, RTP and DTMF arrive with the SIP line."""
