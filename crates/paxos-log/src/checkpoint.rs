//! checkpoints (wip)
