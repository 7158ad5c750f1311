"""Built-in stage programs, run by name from a pipeline file.

Each module is a complete stage program built on `flowctl.stage`; flowctl
starts it as `python -m flowctl.stages.<module>`.
"""
