"""Composition root: configuration, the aiohttp app factory and the `smiling-relay` command."""
