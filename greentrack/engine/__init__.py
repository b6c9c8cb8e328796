"""The engine: one sampler thread per tracker, each channel's energy over time, steps and the
values they carry, recorded metrics with their energy."""
