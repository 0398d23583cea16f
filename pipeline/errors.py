class UserError(Exception):
    """A problem the user can fix (bad path, bad parameter, missing weights).

    The CLI prints it as a single line, without a traceback, and exits with status 2.
    The message names the file or parameter and says what to do.
    """
