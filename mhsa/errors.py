"""The project's error type for configuration mistakes, importable from every layer.

It lives below `mhsa.config` (which re-exports it) so that the model, loss, data and evaluation
packages can raise it without importing the run config.
"""


class ConfigError(ValueError):
    """A bad config key or value; the message names the key (dotted) or the config entry."""
