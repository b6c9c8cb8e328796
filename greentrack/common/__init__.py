"""The shared bottom: settings, units, errors, safe files and text, labels, codecarbon's data,
host leases and the scheduler's job. Imports nothing above it."""
