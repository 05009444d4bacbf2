"""The web-UI HTTP API (``/sdapi/v1/...``) served from the bot's fair, durable queue."""
