"""The one base class of failures whose message already names the cause and the fix.

`python -m src.train` prints such an error as one message, without a traceback, and exits 2.
"""


class UserError(Exception):
    """Bad input or a missing part (config, data, hardware, tracking store, folder): the message says the fix."""
