"""Settings: the endpoints (source, target) and the migration spec, as pydantic models the CLI, config files and
Prefect forms share."""
