"""The domain of a video call: who is calling, who may join, what is audited, how often.

No HTTP and no media here: the REST API (`api/`) and the WebSocket (`signaling/`) translate their
wire formats into calls on this package, and the media core (`relay/`) never sees it.
"""
