"""Checkpoints: consistent snapshots of a pipeline's state, and where they
are stored.

`storage` defines the interface every backend implements; `local` stores
checkpoints as directories on the local disk; `manifest` describes one
checkpoint.

NOTE: runs do not take checkpoints yet; this package is the storage layer
that barrier-aligned checkpointing will write through.
"""
