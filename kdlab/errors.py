"""The one exception for bad input: its message is the single sentence the user sees."""


class ConfigError(ValueError):
    """A run or command was asked for something it cannot do; raised before any compute."""
