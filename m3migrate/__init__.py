"""m3migrate: move a metrics database from M3DB (M3 Coordinator) into Thanos (Receive/Query).

The engine (this package) speaks the wire protocols and holds no Prefect imports, so it is fast to
test and reusable; the Prefect flows in ``flows/`` and tasks in ``tasks/`` orchestrate it.
"""

__version__ = "0.1.0"
