"""Talking to Discord: REST client with rate limiting, gateway probe, snowflakes."""
