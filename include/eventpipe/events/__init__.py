"""The event contract shared by producers, the drain, the archive and the model."""
