"""The error raised for a weights file that cannot be read."""


class CheckpointFileError(ValueError):
    """A `.pth`, `.safetensors` or `.npz` file that is truncated, corrupt, not what its extension
    says, or unsafe (code in a pickle); the message is one line starting with the file's path."""
