"""The project's bad-input errors, in a module of their own that imports nothing, so the command line can catch them
without loading torch.

Both carry a one-line message naming the file, record or option and the problem; `maskbench` prints it as
`error: ...` and exits with status 2 (`--verbose` or MASKBENCH_VERBOSE=1: the traceback instead).
"""


class DatasetError(ValueError):
    """Bad dataset input. The message is one line naming the file, the record and the problem."""


class ConfigurationError(ValueError):
    """A configuration that cannot be parsed or built (benchmarks/lightning_cli.py): one line naming the option or
    component and the problem; `maskbench` prints it as `error: ...` with exit status 2."""
