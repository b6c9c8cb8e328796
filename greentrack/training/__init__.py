"""The training side: the meter the integrations share, their start/stop sequence and totals,
FLOPs, step marks, gathering every node's stores to rank 0, ``@greentrack.track``."""
