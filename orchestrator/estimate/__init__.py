"""Pure arithmetic over specs: parameters, weight bytes, KV cache, memory fit and speed."""
