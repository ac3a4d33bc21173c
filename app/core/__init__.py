"""Settings, database, models, accounts and security: what every part of chatroom stands on."""
