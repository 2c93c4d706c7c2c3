"""WebSocket signaling between browsers and the relay."""
