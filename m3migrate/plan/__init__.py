"""Planning: discover the series, batch them, cut the range into windows and M3 namespace tiers, decide what goes
as blocks, reuse a saved plan."""
