"""The process side: a tracker's start and stop, signals and fork, runs that meet on one host,
what a store records of its process, the carbon-aware start, power-limit calibration."""
