"""HTTP and WebSocket endpoints: thin layers over app.chat and app.core."""
