"""The Llama 3.x network on MLX and everything below it: backend set-up, kernels, cache, checkpoint
readers, loading. Imports only `errors` and `tokenize`."""
