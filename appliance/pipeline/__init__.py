"""The data path: audio in -> endpointing -> transcribe -> screen -> route (tools, knowledge,
model) -> answer -> vet -> speak -> audio out.

``session.py`` keeps a call's media clock, turn-taking and barge-in; ``reply.py`` answers one
turn, one method per stage, and is the path the red team runs too. Reaches engines, storage
and audio only through the Protocols of ``appliance.core.ports``.
"""
