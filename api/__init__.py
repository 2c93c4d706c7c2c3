"""The REST face: request → identity, the error envelope, rate-limit headers, and the routes
(`/api/video-calls/*` over `calls.service`, `/api/admin/*`, `/healthz`); `setup_api` wires it."""
