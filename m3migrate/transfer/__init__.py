"""The remote-write sink: one batch x window moved exactly, the time front's order, replication passes and late
writes."""
