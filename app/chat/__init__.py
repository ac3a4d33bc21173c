"""The chat engine: frames, rooms, fan-out and message storage, independent of HTTP routes."""
