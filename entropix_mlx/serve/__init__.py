"""`entropix serve`: an OpenAI-compatible HTTP server streaming every token's Entropix metrics."""
