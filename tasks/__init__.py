"""Prefect tasks: thin wrappers that give the engine's steps retries, caching and visibility."""
