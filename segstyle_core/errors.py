"""One exception family. Every message is a single line that names the file and the fix."""


class SegstyleError(Exception):
    """Base class of every error segstyle raises on purpose (bad input, weights, config)."""


class InputError(SegstyleError):
    """An input file or value is unusable: unreadable image, wrong size, bad prompt."""


class WeightsError(SegstyleError):
    """A model checkpoint is missing, corrupt, unsafe or fails its checksum."""


class ConfigError(SegstyleError):
    """An option or a combination of options is invalid (unknown class, bad variant)."""


class ResourceError(SegstyleError):
    """The machine ran out of memory for this input; the message says what to shrink."""
