"""Checkpoints: consistent snapshots of a pipeline's state, and where they
are stored.

`storage` defines the interface every backend implements; `local` stores
checkpoints as directories on the local disk; `manifest` describes one
checkpoint.
`config` is the pipeline file's section; `coordinator` schedules, collects
and stores checkpoints during a run; `driver` connects it with the
supervisor; `recovery` picks and checks the checkpoint to resume from;
`cli` is `flowctl checkpoint`.
"""
