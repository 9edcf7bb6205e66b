"""Prefect flows: the wizard's steps (validate, migrate, replicate, verify/close)."""
