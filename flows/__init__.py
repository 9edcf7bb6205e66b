"""Prefect flows: the wizard's steps (validate, migrate, replicate, verify/close).

Every flow run (the CLI, a deployment's worker, the tests) imports this package before it talks to
Prefect, so this is where Prefect's own outbound telemetry is turned off: a migration tool runs next
to production databases, often without internet access, and must not phone home. The engine
(``m3migrate``) no longer touches the environment on import.
"""

import os as _os

_os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
