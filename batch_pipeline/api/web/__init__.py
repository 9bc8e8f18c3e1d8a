"""The web page the HTTP API serves at `/` (static files, no build step)."""
