"""chatroom: a self-hosted, authenticated, multi-room real-time chat server."""
