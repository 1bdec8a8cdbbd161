"""Flight readiness: error-correcting and signed artifacts, bit-flip (SEU) injection, delta
updates."""
