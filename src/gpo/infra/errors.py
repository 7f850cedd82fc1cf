class InputError(ValueError):
    """Bad user input (config value, data file, data row). The message names the
    problem and where it is; train.py reports it in one line, without a traceback."""


class DataError(InputError):
    """Bad input data: the message names the file (or source) and the row."""
