"""User errors: the error classes every entry point turns into one line (`prog: error: message`) and exit code 2.

A mistake in what the user gave (an option, a file, a field of a recipe or of a types file) raises `UserError` or a
subclass of it (`DataFormatError`, `UsageError`, `cllmfs_trainer.run_folder.RunFolderError`, ...), with a message that
names the file, line or field and says what would be accepted. `cllmfs_trainer.command_line.run_entry_point` prints
it; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(ValueError):
    """An error in what the user gave; the message names the file, line or field and what would be accepted.

    A `ValueError`, so code that catches `ValueError` around validation keeps working.
    """

    def __str__(self) -> str:
        # Subclasses that are also `KeyError`s would otherwise print their message quoted, as `repr`.
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class UsageError(UserError):
    """A bad command line: an unknown option, a missing argument or a value of the wrong kind."""


class DataFormatError(UserError):
    """Malformed NER input; the message names the file (or dataset) and the line (or row)."""


class UnknownNameError(UserError, KeyError):
    """A name that is not registered (a dataset, a type, a method); the message lists the known ones.

    Also a `KeyError`, since it is raised by look-ups that used to raise one.
    """


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist. Also a `FileNotFoundError`."""
