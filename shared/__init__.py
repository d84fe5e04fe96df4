"""Code used by both the device (client) and the server: data, features, models, privacy."""
