"""Inference serving: `triton` runs classifiers in a real Triton Inference Server (through PyTriton) and
`client` calls it. The client imports only numpy and tritonclient, so the SDK can use it without torch."""
