"""The blocks sink: block windows read through the read stage and written as TSDB blocks (m3migrate.tsdb) into
the bucket."""
