class DomainError(Exception):
    """A rule of the domain refused an operation. One type, turned into a 400 (or the
    status given) by the API, an admin message, or a form error."""

    def __init__(self, message: str, *, code: str = "invalid", status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
