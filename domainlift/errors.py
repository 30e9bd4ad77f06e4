"""The problems a user can fix: every stage raises one of these with a message that names the problem and the fix,
and every command line prints `error: <message>` and exits 2 for any of them (domainlift/cli.py).

Each also keeps the built-in type it was before there was one base class (ValueError, RuntimeError,
FileExistsError), so code that caught those still catches them.
"""


class DomainliftError(Exception):
    """A problem with the user's input, config or artifacts; the message names it and the fix."""


class ConfigError(DomainliftError, ValueError):
    """A config problem; the message names the key and the fix."""


class DataError(DomainliftError, ValueError):
    """A data problem; the message names the file (and line) and the fix."""


class ManifestError(DomainliftError, RuntimeError):
    """An artifact is missing, incomplete or does not match its manifest."""


class ArtifactExistsError(DomainliftError, FileExistsError):
    """An artifact (or a run's saved state) is already there and the command was not told to replace it."""


class ExportError(DomainliftError, RuntimeError):
    """One or more export variants failed to build; the export report says why."""


class ServiceError(DomainliftError, RuntimeError):
    """A service started for a benchmark did not come up or died; the message holds the end of its log."""
