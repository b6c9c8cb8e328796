"""The command line: ``greentrack run``, ``doctor``, ``summary``, ``merge`` (``main``) and the
report commands (``reports``): parsing and one-line errors; the work is done by the layers below."""
