"""The checks: validation before data moves, verification after, and the dashboards' queries after the move."""
