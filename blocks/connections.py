"""The source and target as Prefect blocks: the engine's settings models, made savable.

The fields are those of the engine's pydantic models, so the CLI, config files and blocks share one
definition; secrets are SecretStr and show as stars in the Prefect UI.
"""

from __future__ import annotations

from typing import ClassVar

from prefect.blocks.core import Block
from pydantic import HttpUrl

from m3migrate.clients.bucket import BucketSettings
from m3migrate.settings.endpoints import SourceSettings, TargetSettings


class M3Source(Block, SourceSettings):
    """An M3 Coordinator to migrate from: remote-read URL, PromQL URL, auth, TLS, namespace pin."""

    _block_type_name: ClassVar[str] = "m3migrate M3 Source"
    _block_type_slug: ClassVar[str] = "m3migrate-m3-source"
    _documentation_url: ClassVar[HttpUrl] = HttpUrl("https://m3db.io/docs/integrations/prometheus/")
    _description: ClassVar[str] = "M3 Coordinator (remote read + PromQL API) that m3migrate reads history from."

    def settings(self) -> SourceSettings:
        return SourceSettings.model_validate(self.model_dump(include=set(SourceSettings.model_fields)))


class ThanosTarget(Block, TargetSettings):
    """A Thanos Receive to migrate into, with the Thanos Query URL that reads it back."""

    _block_type_name: ClassVar[str] = "m3migrate Thanos Target"
    _block_type_slug: ClassVar[str] = "m3migrate-thanos-target"
    _documentation_url: ClassVar[HttpUrl] = HttpUrl("https://thanos.io/tip/components/receive.md/")
    _description: ClassVar[str] = "Thanos Receive (remote write) and Thanos Query that m3migrate writes into."

    def settings(self) -> TargetSettings:
        return TargetSettings.model_validate(self.model_dump(include=set(TargetSettings.model_fields)))


class ThanosBucket(Block, BucketSettings):
    """The object store Thanos reads blocks from (write modes blocks and hybrid): a local directory in
    Thanos' FILESYSTEM layout, or s3://, gs://, az:// with credentials (SecretStr, starred in the UI), and the
    compactor's raw retention (retention_resolution_raw) that validation checks the blocks' ends against."""

    _block_type_name: ClassVar[str] = "m3migrate Thanos Bucket"
    _block_type_slug: ClassVar[str] = "m3migrate-thanos-bucket"
    _documentation_url: ClassVar[HttpUrl] = HttpUrl("https://thanos.io/tip/thanos/storage.md/")
    _description: ClassVar[str] = "Thanos object store (bucket) that m3migrate uploads history blocks into."

    def settings(self) -> BucketSettings:
        return BucketSettings.model_validate(self.model_dump(include=set(BucketSettings.model_fields)))
