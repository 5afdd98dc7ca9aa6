"""Words around numbers in what epfiot prints: "1 action", "2 actions"."""


def counted(number: int, noun: str, plural: str | None = None) -> str:
    return f"{number} {noun if number == 1 else plural or noun + 's'}"
