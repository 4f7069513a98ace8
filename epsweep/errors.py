"""Errors a user can cause. The CLI turns each into exit code 2 and one line."""


class UserError(ValueError):
    """Bad input from the user: a number, a file, a name. Its message is one clear line."""
