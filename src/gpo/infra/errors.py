"""Failures reported in one line, without a traceback (gpo.run.run_job): the
message names the problem, where it is, and what to do or what was kept."""


class OneLineError(Exception):
    """A failure whose message says everything a person needs."""


class InputError(OneLineError, ValueError):
    """Bad user input (config value, data file, data row). The message names the
    problem and where it is; train.py reports it in one line, without a traceback."""


class DataError(InputError):
    """Bad input data: the message names the file (or source) and the row."""


class RunError(OneLineError, RuntimeError):
    """The run cannot go on (a full disk, a damaged checkpoint or cache entry, a
    non-finite loss): the message names what failed, where, and what is kept."""


class RunRefused(InputError):
    """The run directory is not this run's to write: another process holds it, or
    it holds another experiment. Nothing is written into it (not even a failure record)."""
