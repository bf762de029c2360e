"""Errors a user can act on; the CLI prints them as one line."""


class EntropixError(Exception):
    """A problem with the user's input or environment, phrased as what to do about it."""


class ModelLoadError(EntropixError):
    """A model path, file or format that cannot be loaded."""


class TokenizerError(EntropixError):
    """A tokenizer file or vocabulary that cannot be used."""


class ContextFullError(EntropixError):
    """The prompt plus the answer would not fit the model's context."""
