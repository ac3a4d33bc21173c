"""The HTTP and WebSocket surface: routes, their dependencies and schemas."""
