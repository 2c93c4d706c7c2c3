"""The REST API: JWT authentication, the access policy, rate limits, audit, and the routes."""
