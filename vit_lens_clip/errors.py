class UserInputError(Exception):
    """An error in the user's input: the CLI prints one line and exits 2."""
