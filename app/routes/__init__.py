"""HTTP and WebSocket endpoints: thin layers over app.chat, app.users and app.security."""
