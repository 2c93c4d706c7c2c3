"""The WebSocket face: the `/ws` protocol (`protocol`), one connection (`connection`) over
`calls.service` and the relay, and `setup_signaling`."""
