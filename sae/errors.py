"""User mistakes are `UserError`s: the CLI prints them on one line and exits with code 2."""


class UserError(Exception):
    """A problem with the user's input that the user can fix; the message names the fix."""
