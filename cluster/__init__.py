"""Scale-out: where each call lives (placement), the fleet's shared state (leases, node
heartbeats, shared rate limits) and the node agent that keeps them fresh. See docs/scaling.md.

Imports no HTTP, media or face: the composition root hands it what it reads (the relay's rooms
and load) as plain callables.
"""
