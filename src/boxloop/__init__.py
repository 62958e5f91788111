"""boxloop."""
