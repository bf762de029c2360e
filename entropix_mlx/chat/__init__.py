"""A multi-turn conversation over one KV cache, and the chat loop that drives a view."""
