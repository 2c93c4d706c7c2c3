"""The media core: rooms, participants, aiortc peer connections and encoded-media forwarding.

This package knows nothing about HTTP, JWT or storage.
"""
