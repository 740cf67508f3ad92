"""The Wan2.1 causal family (Self-Forcing, CausVid, LongLive, ...) behind livereel's engine."""
