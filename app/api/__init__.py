"""The HTTP and WebSocket layer (the only package that imports the web framework)."""
