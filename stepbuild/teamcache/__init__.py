"""The team cache: records shared through a directory or a registry."""
