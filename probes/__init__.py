"""probes: fast probes on an embedcache store (classification and segmentation)."""
