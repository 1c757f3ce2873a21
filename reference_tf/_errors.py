"""The one exception type of reference_tf."""


class ReferenceError(ValueError):  # noqa: A001 - the public name the harness catches
    """Bad input to the TF reference: a checkpoint variable missing or of the wrong shape,
    an unknown tap, an injected array of the wrong shape. The message is one line."""
