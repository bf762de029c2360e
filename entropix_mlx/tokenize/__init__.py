"""Text to token ids and back: tokenizer backends, their files, GGUF vocabularies, chat
templates."""
