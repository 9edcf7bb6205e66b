"""Prefect blocks: the source and target connections, saved once and picked in the Prefect UI.

Register them with `prefect block register -m blocks`.
"""

from blocks.connections import M3Source, ThanosBucket, ThanosTarget

__all__ = ["M3Source", "ThanosBucket", "ThanosTarget"]
