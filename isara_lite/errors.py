"""The one error type the CLI turns into a one-line message and exit code 2."""


class IsaraError(Exception):
    """A user-facing problem: bad input, a missing model, a refused resume."""


def where(path, line=None, field=None) -> str:
    """'file:line: field' prefix for messages about input files."""
    out = str(path)
    if line is not None:
        out += f":{line}"
    if field:
        out += f": field '{field}'"
    return out
