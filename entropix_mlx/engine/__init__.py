"""The Entropix method and decoding: sampler config and profiles, metrics, samplers, `generate`,
stop strings, run-file records. Knows nothing of terminals, chats or the lab."""
